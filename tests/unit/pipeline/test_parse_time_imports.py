"""Snakemake imports sd3coreml.pipeline at parse time: it must stay free of the heavy frameworks."""

import json
import pkgutil
import subprocess
import sys

import sd3coreml.pipeline

HEAVY = ("torch", "coremltools", "diffusers", "transformers")
PIPELINE_MODULES = [f"sd3coreml.pipeline.{module.name}" for module in pkgutil.iter_modules(sd3coreml.pipeline.__path__)]


def loaded_by(modules: list[str]) -> set[str]:
    """The top-level packages a fresh interpreter holds after importing `modules`."""
    program = "import importlib, json, sys\n"
    program += f"for name in {modules!r}: importlib.import_module(name)\n"
    program += "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))"
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout))


def test_importing_the_parse_time_layer_pulls_in_no_framework():
    assert {"artifacts", "config", "plan", "code_closure", "disk", "handoff"} <= {
        name.rsplit(".", 1)[1] for name in PIPELINE_MODULES
    }
    assert not loaded_by(PIPELINE_MODULES) & set(HEAVY)


def test_the_probe_sees_a_framework_when_one_is_imported():
    # The check above is only as good as its probe: a module that does import torch shows it.
    assert "torch" in loaded_by(["sd3coreml.convert.conversion"])
