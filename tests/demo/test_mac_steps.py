"""The Mac-only steps on the demo's real packages: profile-on-device's refusal and inputs, mac-selfcheck's probe."""

import subprocess
import sys

import numpy as np
import pytest
from harness import FAKE_COMPILER_TEMPLATE

from sd3coreml.sweep.device_profile import zero_inputs
from sd3coreml.sweep.mac_selfcheck import spelling_probe, with_spelling


@pytest.mark.skipif(sys.platform == "darwin", reason="the refusal is what other hosts do")
def test_off_macos_the_step_refuses_in_one_line_and_writes_nothing(demo_build, tmp_path):
    package = next((demo_build / "results/demo/mmdit").rglob("input.fp16.mlpackage"))
    out = tmp_path / "profile.json"
    command = [sys.executable, "-m", "sd3coreml", "profile-on-device", "--package", str(package), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {package}: on-device measurement needs a Mac")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_inputs_follow_the_packages_declared_shapes_and_dtypes(demo_build):
    package = next((demo_build / "results/demo/mmdit").rglob("blocks0-1.fp16.mlpackage"))
    inputs = zero_inputs(package)
    # The demo's Stage1 at latent 16x16: 64 image tokens, 154 text tokens, width 64, fp32 inputs.
    assert {name: (array.shape, array.dtype) for name, array in inputs.items()} == {
        "latent_image_embeddings": ((1, 64, 64), np.float32),
        "token_level_text_embeddings": ((1, 154, 64), np.float32),
        "modulation_inputs": ((1, 64), np.float32),
    }
    assert not any(array.any() for array in inputs.values())


def test_the_probe_compiles_with_each_spelling_and_records_what_the_compiler_took(demo_build):
    package = next((demo_build / "results/demo/mmdit").rglob("input.fp16.mlpackage"))
    probes = spelling_probe(package, FAKE_COMPILER_TEMPLATE)
    # The double accepts exactly the template's spelling, iOS.
    assert probes["iOS"]["exit"] == 0 and probes["iOS"]["tree"] == ["input.fp16.mlmodelc/metadata.json",
                                                                      "input.fp16.mlmodelc/model.mil"]  # fmt: skip
    assert probes["ios"]["exit"] == 1 and probes["ios"]["tree"] == [] and "usage" in probes["ios"]["stderr"]
    assert with_spelling(FAKE_COMPILER_TEMPLATE, "ios").count("--platform ios") == 1
