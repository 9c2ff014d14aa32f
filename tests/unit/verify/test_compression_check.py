"""A mode's end-to-end figures are held against the sweep's one fp16 chain file."""

import numpy as np
import pytest
from safetensors.numpy import save_file

from sd3coreml.errors import PipelineError
from sd3coreml.verify.end_to_end import compression_check as check
from sd3coreml.verify.measure import psnr

SPEC = {"mode": "int8", "layout": "1-2-2", "prompt": "a cat", "seed": 0, "steps": 4}


def chain_values(offset: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: (rng.standard_normal((1, 4, 8, 8)) + offset).astype(np.float32) for name in check.JUDGED}


def test_a_mode_is_compared_with_the_fp16_chain_written_once(tmp_path, monkeypatch):
    fp16, compressed = chain_values(0.0), chain_values(0.0)
    compressed["image"] = compressed["image"] + np.float32(0.01)
    monkeypatch.setattr(check, "judged_values", lambda spec: fp16 if spec["mode"] is None else compressed)
    check.write_fp16_chain({**SPEC, "mode": None}, tmp_path / "fp16_chain.safetensors")
    figures = check.compression_check(SPEC, tmp_path / "fp16_chain.safetensors")
    assert figures["final_latent_db"] == "inf" and figures["decoded_latent_db"] == "inf"
    assert figures["image_db"] == pytest.approx(round(psnr(fp16["image"], compressed["image"]), 3))
    assert figures["mode"] == "int8" and figures["against"] == "the same chain with fp16 MMDiT packages"


def test_a_chain_file_without_the_judged_values_is_refused_by_path(tmp_path):
    path = tmp_path / "fp16_chain.safetensors"
    save_file({"final_latent": np.zeros(4, dtype=np.float32)}, str(path))
    with pytest.raises(PipelineError, match=r"fp16_chain.safetensors: holds \['final_latent'\].*rerun the sweep's fp16 chain"):
        check.compression_check(SPEC, path)
