"""The free-space check before a build, from safetensors headers only."""

import shutil
from collections import namedtuple

import pytest
import torch
from safetensors.torch import save_file

from sd3coreml.errors import PipelineError
from sd3coreml.pipeline.disk import BYTES_WRITTEN_PER_WEIGHT, estimate_build_bytes, require_free_space

Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(1000, 250, dtype=torch.float16), "b": torch.zeros(10)}, str(path))
    return path


def test_estimate_counts_every_weight_of_existing_files(weights, tmp_path):
    assert estimate_build_bytes([weights, tmp_path / "not-yet-made.safetensors"]) == 250_010 * BYTES_WRITTEN_PER_WEIGHT


def test_short_disk_fails_in_one_line_naming_the_output_root(weights, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**6, 0, 10**5))
    with pytest.raises(PipelineError, match=r"results/new: the build writes up to .* GiB but 0.0 GiB are free"):
        require_free_space(tmp_path / "results" / "new", [weights])


def test_enough_disk_passes(weights, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 0, 10**8))
    require_free_space(tmp_path / "results", [weights])


def test_a_planned_block_range_counts_only_its_own_tensors(tmp_path):
    from types import SimpleNamespace

    from sd3coreml.pipeline.artifacts import Artifacts

    path = tmp_path / "t.safetensors"
    tensors = {f"transformer_blocks.{i}.attn.to_q.weight": torch.zeros(100, 10, dtype=torch.float16) for i in range(4)}
    tensors |= {"proj_out.weight": torch.zeros(7, 10), "time_text_embed.linear.weight": torch.zeros(3, 10)}
    save_file(tensors, str(path))
    artifacts = Artifacts(str(tmp_path / "results"), "iOS18", "latent64x64", "18.2", {})
    models = {"m": SimpleNamespace(weights=path)}
    root = tmp_path / "results" / "mmdit" / "m" / "iOS18"
    outputs = [
        root / "latent64x64" / "blocks1-3.fp16.mlpackage",
        root / "latent64x64" / "blocks3-4_head.fp16.mlpackage",
    ]
    files = artifacts.weights_to_convert([str(path) for path in outputs], models, tmp_path / "components")
    assert estimate_build_bytes(files) == (3 * 1000 + 70) * BYTES_WRITTEN_PER_WEIGHT
    everything = [str(root / "conditioning.fp16.mlpackage"), *map(str, outputs)]
    assert (
        estimate_build_bytes(artifacts.weights_to_convert(everything, models, tmp_path))
        == (3 * 1000 + 70 + 30) * BYTES_WRITTEN_PER_WEIGHT
    )
