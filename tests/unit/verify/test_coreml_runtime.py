"""Core ML's calls: the macOS each package needs, a child process that can die or hang harmlessly, and
each package compiled once per child."""

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from harness import TESTS

from sd3coreml.contract import (
    CONDITIONING,
    HIDDEN_EMBEDS,
    MODULATION_INPUTS,
    NOISE_PRED,
    POOLED_OUTPUTS,
    STAGE_OUTPUTS,
    STAGE_PREFIX,
    VAE_DECODER,
    VAE_IMAGE,
)
from sd3coreml.sweep.device_profile import device_columns
from sd3coreml.verify.coreml_runtime import unavailable_reason
from sd3coreml.verify.isolated import describe, run_isolated


@pytest.fixture
def children(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(TESTS))


@pytest.mark.parametrize(
    "platform, macos, spec_version, reason",
    [
        ("linux", None, 9, "needs macOS"),
        ("darwin", 14, 9, "needs macOS 15"),  # iOS18 packages: coremltools' own guard misses this
        ("darwin", 15, 9, None),
        ("darwin", 14, 8, None),  # iOS17 packages load on macOS 14
        ("darwin", 13, 8, "needs macOS 14"),
        ("darwin", 13, 7, None),
    ],
)
def test_the_macos_a_package_needs(platform, macos, spec_version, reason):
    assert unavailable_reason(spec_version, platform, macos) == reason


def test_a_child_returns_its_value(children):
    assert run_isolated("isolated_children:add", {"a": 2, "b": 3}, timeout_s=60).value == 5


def test_a_child_that_kills_itself_is_a_record_with_its_last_words(children):
    result = run_isolated("isolated_children:kill_itself", {}, timeout_s=60)
    assert not result.ok and result.failure["failure"] == "signal" and result.failure["signal"] == "SIGKILL"
    assert any("ANECCompile() FAILED" in line for line in result.failure["stderr"])
    assert describe(result.failure).startswith("signal SIGKILL after ")


def test_a_child_past_its_timeout_is_a_record(children):
    result = run_isolated("isolated_children:sleep_for", {"seconds": 30}, timeout_s=1)
    assert result.failure["failure"] == "timeout" and result.failure["seconds"] == 1
    assert describe(result.failure) == "no answer within 1 s"


def test_a_child_that_raises_is_a_record(children):
    result = run_isolated("isolated_children:fail", {}, timeout_s=60)
    assert result.failure["failure"] == "exit" and result.failure["exit_code"] == 1
    assert "RuntimeError: Core ML said no" in result.failure["stderr"][-1]


def test_the_sweep_columns_say_what_kept_core_ml_from_measuring():
    failed = {"package": "p", "failed": "signal SIGKILL after 2.0 s", "failure": "signal"}
    assert device_columns(failed)["predict_s"] == "failed: signal SIGKILL after 2.0 s"
    assert device_columns({"package": "p", "unavailable": "needs macOS 15"})["first_load_s"] == "needs macOS 15"


class CoreMLDouble:
    """coremltools' compile and load on a Mac, counted: `compile_model` writes a stand-in .mlmodelc
    naming its package, `CompiledMLModel` reads it back and answers with zeros of the app's shapes."""

    def __init__(self, noise_shape, last_stage: str):
        self.noise_shape, self.last_stage = noise_shape, last_stage
        self.compiles, self.loads, self.units = Counter(), Counter(), set()

    def compile_model(self, model, destination_path=None):
        assert destination_path.endswith(".mlmodelc") and Path(model).name.endswith(".mlpackage")
        self.compiles[Path(model).name] += 1
        Path(destination_path).mkdir()
        (Path(destination_path) / "package").write_text(Path(model).name)
        return destination_path

    def compiled_model(self, path, compute_units):
        double, name = self, (Path(path) / "package").read_text()
        double.loads[name] += 1
        double.units.add(compute_units.name)

        class Loaded:
            def predict(self, inputs):
                return double.outputs(name, inputs)

        return Loaded()

    def outputs(self, name: str, inputs: dict) -> dict:
        if name.startswith("TextEncoder"):
            return {HIDDEN_EMBEDS: np.zeros((1, 77, 4)), POOLED_OUTPUTS: np.zeros((1, 4))}
        if name.startswith(CONDITIONING):
            return {MODULATION_INPUTS: np.zeros((1, 8, 1, 1))}
        if name == self.last_stage:
            return {NOISE_PRED: np.zeros(self.noise_shape, dtype=np.float32)}
        if name.startswith(STAGE_PREFIX):
            return {name: np.zeros((1, 16, 1, 4), dtype=np.float32) for name in STAGE_OUTPUTS}
        return {VAE_IMAGE: np.zeros((1, 3, 16, 16), dtype=np.float32)}


def test_the_core_ml_chain_compiles_each_package_once_and_loads_it_at_every_step(tmp_path, monkeypatch):
    """Finding: an MLModel per prediction compiled every package at every call (35 compiles for 4 steps
    over seven stages). Now one compile per package per chain, and the app's load per step."""
    import coremltools as ct

    from sd3coreml.verify.end_to_end.coreml_chain import coreml_chain
    from sd3coreml.verify.end_to_end.sampler import AppSchedule

    stages = 7
    folder = tmp_path / "coremlsd3_x_packages"
    names = ["TextEncoder", "TextEncoder2", CONDITIONING, VAE_DECODER] + [f"{STAGE_PREFIX}{i}" for i in range(stages)]
    for name in names:
        (folder / f"{name}.mlpackage").mkdir(parents=True)
    noise = np.zeros((1, 16, 2, 2), dtype=np.float32)
    double = CoreMLDouble(noise.shape, f"{STAGE_PREFIX}{stages - 1}.mlpackage")
    monkeypatch.setattr(ct.models.utils, "compile_model", double.compile_model)
    monkeypatch.setattr(ct.models, "CompiledMLModel", double.compiled_model)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "child-root"))
    (tmp_path / "child-root").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again, as a fresh child does

    ids = {"TextEncoder": [0] * 77, "TextEncoder2": [0] * 77}
    values = coreml_chain(str(folder), ids, noise, AppSchedule(4, 3.0), 16, "CPU_AND_NE")

    assert (None, "image") in values
    assert double.compiles == Counter({f"{name}.mlpackage": 1 for name in names}) and len(double.compiles) == 11
    per_step = {f"{name}.mlpackage": 4 for name in [CONDITIONING] + [f"{STAGE_PREFIX}{i}" for i in range(stages)]}
    assert double.loads == Counter({"TextEncoder.mlpackage": 1, "TextEncoder2.mlpackage": 1,
                                    f"{VAE_DECODER}.mlpackage": 1, **per_step})  # fmt: skip
    assert sum(double.loads.values()) == 2 + 4 * (1 + stages) + 1 == 35
    assert double.units == {"CPU_AND_NE"}
    # The compiled models live in the child's temporary root, which `isolated` removes.
    assert [path.parent.parent for path in (tmp_path / "child-root").glob("compiled-*/*.mlmodelc/package")]


def test_a_prediction_compiles_its_package_once_and_refuses_unknown_units(tmp_path, monkeypatch):
    import coremltools as ct

    from sd3coreml.verify.coreml_runtime import CompiledPackages, predict

    package = tmp_path / "TextEncoder.mlpackage"
    package.mkdir()
    double = CoreMLDouble((1,), "none")
    monkeypatch.setattr(ct.models.utils, "compile_model", double.compile_model)
    monkeypatch.setattr(ct.models, "CompiledMLModel", double.compiled_model)
    assert set(predict(str(package), {}, "CPU_ONLY")) == {HIDDEN_EMBEDS, POOLED_OUTPUTS}
    assert double.compiles == Counter({package.name: 1}) and double.units == {"CPU_ONLY"}
    with pytest.raises(ValueError, match="compute units 'NEURAL_ENGINE'"):
        CompiledPackages("NEURAL_ENGINE")


def chain_values(scale: float = 1.0) -> dict:
    rng = np.random.default_rng(0)
    names = [(None, "prompt_embeds"), (0, CONDITIONING), (None, "final_latent"), (None, "decoded_latent"), (None, "image")]
    return {key: rng.standard_normal(8).astype(np.float32) * scale for key in names}


@pytest.mark.parametrize(
    "outcome, enforce, status, units, failure",
    [
        (chain_values(), True, "measured", "CPU_AND_NE", None),
        (chain_values(-1.0), False, "measured", "CPU_AND_NE", None),  # under the bar, not enforced
        (chain_values(-1.0), True, "measured", "CPU_AND_NE", "under the bar of 30 dB (in Core ML)"),
        ("needs macOS 15", True, "needs macOS 15", None, None),
        ({"failed": "signal SIGKILL after 9.0 s", "failure": "signal"}, False, "failed", "CPU_AND_NE", None),
        ({"failed": "signal SIGKILL after 9.0 s", "failure": "signal"}, True, "failed", "CPU_AND_NE",
         "the Core ML chain failed (signal SIGKILL after 9.0 s)"),
    ],
)  # fmt: skip
def test_core_ml_s_end_to_end_check_says_what_ran_and_fails_only_where_enforced(
    monkeypatch, outcome, enforce, status, units, failure
):
    from sd3coreml.verify.end_to_end import check, coreml_chain
    from sd3coreml.verify.end_to_end.chain_record import ChainRecord
    from sd3coreml.verify.end_to_end.sampler import AppSchedule

    monkeypatch.setattr(coreml_chain, "isolated_chain", lambda *args: outcome)
    reference = ChainRecord(chain_values())
    report, image, failed = check.coreml_side("folder", {}, None, AppSchedule(4, 3.0), 16, reference, 30.0,
                                              ("CPU_AND_NE", enforce))  # fmt: skip
    assert (report["coreml"], report["compute_units"]) == (status, units)
    assert (failed is None) if failure is None else failure in failed
    assert (image is None) == (status != "measured")
    if status == "measured":
        assert {row["name"] for row in report["comparisons"]} == {name for _, name in chain_values()}
        same = np.array_equal(outcome[(None, "final_latent")], reference.values[(None, "final_latent")])
        assert (report["final_latent_psnr_db"] == "inf") == same
