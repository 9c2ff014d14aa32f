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
