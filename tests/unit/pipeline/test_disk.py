"""The checks before a build: free space from safetensors headers only, and the largest job against memory."""

import shutil
from collections import namedtuple
from types import SimpleNamespace

import psutil
import pytest
import torch
from safetensors.torch import save_file

from sd3coreml.errors import PipelineError
from sd3coreml.pipeline.disk import (
    BYTES_WRITTEN_PER_WEIGHT,
    SKIP_MEMORY_CHECK,
    check_host,
    estimate_build_bytes,
    planned_memory,
    require_free_space,
)

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


def fake_job(rule: str, mem_mb, inputs=(), computed=False, local=False):
    """What planned_memory reads of a Snakemake job: its rule, resources (already held to
    --resources), inputs, outputs and whether it is a local rule."""
    declared = SimpleNamespace(is_evaluable=lambda: computed)
    return SimpleNamespace(
        rule=SimpleNamespace(name=rule, resources={"mem_mb": declared}),
        resources={"_cores": 1} | ({} if mem_mb is None else {"mem_mb": mem_mb}),
        input=[str(path) for path in inputs],
        output=[f"results/{rule}.out"],
        is_local=local,
    )


def fake_machine(monkeypatch, total_bytes: int):
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(total=total_bytes))


def check_memory(planned) -> None:
    host = SimpleNamespace(root="results", weights_to_convert=lambda outputs, models, components: [])
    check_host(host, [], {}, {"components": "components"}, planned)


def test_the_largest_planned_job_is_refused_on_a_smaller_machine(monkeypatch):
    monkeypatch.delenv(SKIP_MEMORY_CHECK, raising=False)
    fake_machine(monkeypatch, 16 * 2**30)  # a 16 GB laptop: 17179 MB
    planned = [("rule mmdit (a)", 4000), ("rule end_to_end (b)", 18000), ("rule vae (c)", 6000)]
    with pytest.raises(PipelineError) as raised:
        check_memory(planned)
    assert str(raised.value) == (
        "rule end_to_end (b) is planned with mem_mb=18000, more than this machine's 17179 MB of memory, where it "
        "would swap or be killed: run with --resources mem_mb=14000 app_chain=1 to hold every job to what this "
        "machine has (a job that truly needs more still swaps), or build on a machine with more memory"
    )
    fake_machine(monkeypatch, 24 * 2**30)
    check_memory(planned)


def test_the_ci_runner_may_skip_the_memory_check(monkeypatch):
    fake_machine(monkeypatch, 7 * 2**30)
    monkeypatch.setenv(SKIP_MEMORY_CHECK, "1")
    check_memory([("rule verify_text_encoder (a)", 8000)])


def test_a_job_is_counted_as_snakemake_schedules_it_on_this_machine(tmp_path):
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"")
    jobs = [
        fake_job("verify_vae_decoder", 8000),
        # A figure Snakemake already held to --resources mem_mb (its Resource.constrain): what the job gets.
        fake_job("text_encoder", 6000),
        # Computed from its weights, which exist: the figure is the real one.
        fake_job("end_to_end", 2000, inputs=[weights], computed=True),
        # Computed before its weights exist: a placeholder, computed again when the job is ready.
        fake_job("end_to_end", 18000, inputs=[tmp_path / "not-yet.safetensors"], computed=True),
        fake_job("all", None),
    ]
    assert planned_memory(jobs, local_exec=True) == [
        ("rule verify_vae_decoder (results/verify_vae_decoder.out)", 8000),
        ("rule text_encoder (results/text_encoder.out)", 6000),
        ("rule end_to_end (results/end_to_end.out)", 2000),
    ]
    # Through a cluster executor only local rules run here.
    cluster = [fake_job("mmdit", 16000), fake_job("packages_folder", 1000, local=True)]
    assert planned_memory(cluster, local_exec=False) == [("rule packages_folder (results/packages_folder.out)", 1000)]
