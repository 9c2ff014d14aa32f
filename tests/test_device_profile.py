"""On-device measurement: the parts that run anywhere, and the one-line refusal off macOS.

Core ML's compute plan, load and predict run only on macOS; nothing here stands in for them.
"""

import subprocess
import sys

import numpy as np
import pytest

from sd3coreml.device_profile import count_placements, device_columns, zero_inputs


@pytest.mark.skipif(sys.platform == "darwin", reason="the refusal is what other hosts do")
def test_off_macos_the_step_refuses_in_one_line_and_writes_nothing(demo_workdir, tmp_path):
    package = next((demo_workdir / "results/demo/mmdit").rglob("input.fp16.mlpackage"))
    out = tmp_path / "profile.json"
    command = [sys.executable, "-m", "sd3coreml", "profile-on-device", "--package", str(package), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {package}: on-device measurement needs a Mac")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_placements_count_ops_by_preferred_device_and_skip_weights():
    counts = count_placements(["neural_engine", None, "cpu", "neural_engine", "gpu", None])
    assert counts == {"total": 4, "neural_engine": 2, "gpu": 1, "cpu": 1}


def test_columns_give_the_neural_engine_share():
    profile = {"ops": {"total": 8, "neural_engine": 6, "gpu": 0, "cpu": 2}, "first_load_s": 3.5, "predict_s": 0.25}
    assert device_columns(profile) == {"neural_engine_ops_pct": 75.0, "first_load_s": 3.5, "predict_s": 0.25}


def test_inputs_follow_the_packages_declared_shapes_and_dtypes(demo_workdir):
    package = next((demo_workdir / "results/demo/mmdit").rglob("blocks0-1.fp16.mlpackage"))
    inputs = zero_inputs(package)
    # The demo's Stage1 at latent 16x16: 64 image tokens, 154 text tokens, width 64, fp32 inputs.
    assert {name: (array.shape, array.dtype) for name, array in inputs.items()} == {
        "latent_image_embeddings": ((1, 64, 64), np.float32),
        "token_level_text_embeddings": ((1, 154, 64), np.float32),
        "modulation_inputs": ((1, 64), np.float32),
    }
    assert not any(array.any() for array in inputs.values())
