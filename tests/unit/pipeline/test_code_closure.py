"""A job's code is named by content, from its imports: no path, no time, no hand-written list."""

import argparse
import importlib

from harness import REPO

from sd3coreml.commands import main as cli
from sd3coreml.pipeline.code_closure import CodeBase

CODE = CodeBase(REPO / "src")


def test_each_step_module_registers_exactly_its_steps():
    for module in set(cli.STEP_MODULES.values()):
        subparsers = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register_cli(subparsers)
        assert set(subparsers.choices) == {step for step, name in cli.STEP_MODULES.items() if name == module}


def test_a_conversion_steps_code_is_what_its_function_imports():
    assert {"sd3coreml.convert.vae", "sd3coreml.convert.conversion", "sd3coreml.convert.package"} <= CODE.step_code(
        "convert-vae-decoder"
    )
    assert "sd3coreml.convert.mmdit_modules" not in CODE.step_code("convert-vae-decoder")
    # The text encoder imports the contract's token ids (a hand-written list once left them out).
    assert "sd3coreml.contract" in CODE.step_code("convert-text-encoder")
    assert "sd3coreml.synthetic.presets" in CODE.step_code("synthetic-transformer")
