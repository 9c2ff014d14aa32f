"""Pinned Hub downloads, from a hand-made Hugging Face cache with HF_HUB_OFFLINE=1 (no network)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx2
import huggingface_hub
import pytest
import yaml
from conftest import REPO, new_workdir
from huggingface_hub import constants
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

from sd3coreml import cli
from sd3coreml.download import download_file, download_snapshot, planned_downloads
from sd3coreml.errors import PipelineError

MODEL_REPO = "Owner/MobileDiffuser-test"
SD3_REPO = "stabilityai/stable-diffusion-3-medium-diffusers"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
WEIGHTS = "checkpoints/sd3-medium-4step.safetensors"
SD3_FILES = {
    "text_encoder/config.json": b'{"hidden_size": 768}\n',
    "text_encoder_2/config.json": b'{"hidden_size": 1280}\n',
    "vae/config.json": b'{"latent_channels": 16}\n',
    "tokenizer/vocab.json": b'{"a": 0}\n',
    "tokenizer/merges.txt": b"#version: 0.2\na b\n",
}
# In the repo, never to be placed: the snapshot takes the pinned files only.
UNPINNED = {"text_encoder_3/config.json": b"{}\n", "transformer/config.json": b"{}\n"}
TOKEN = "hf_secret123"
# `python -m sd3coreml` once cli.STEP_MODULES lists sd3coreml.download; until then the same
# main() with the module registered.
CLI = (
    [sys.executable, "-m", "sd3coreml"]
    if "sd3coreml.download" in cli.STEP_MODULES
    else [
        sys.executable,
        "-c",
        "import sys; from sd3coreml import cli; cli.STEP_MODULES.append('sd3coreml.download'); sys.exit(cli.main())",
    ]
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fill_cache(cache: Path, repo: str, files: dict[str, bytes]) -> dict[str, str]:
    """huggingface_hub's cache layout for `repo` at COMMIT; returns {path: sha256}."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(COMMIT)
    for path, data in files.items():
        blob = storage / "blobs" / sha256(data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        pointer = storage / "snapshots" / COMMIT / path
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    return {path: sha256(data) for path, data in files.items()}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An offline hub whose cache holds the distilled weights and SD3's components."""
    cache = tmp_path / "hub"
    fill_cache(cache, MODEL_REPO, {WEIGHTS: b"distilled weights"})
    fill_cache(cache, SD3_REPO, {**SD3_FILES, **UNPINNED})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub read both variables when it was imported.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def only_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_pinned_file_is_placed_and_verified(hub_cache, tmp_path):
    out = tmp_path / "checkpoints" / "sd3-medium-4step.safetensors"
    download_file(MODEL_REPO, WEIGHTS, COMMIT, sha256(b"distilled weights"), out)
    assert out.read_bytes() == b"distilled weights" and not out.is_symlink()
    assert out.stat().st_nlink == 2  # shares the cache's blob: no second copy of GBs of weights
    assert sorted(path.name for path in out.parent.iterdir()) == [out.name]


def test_file_is_copied_where_hard_links_fail(hub_cache, tmp_path, monkeypatch):
    def cross_device(*args):
        raise OSError("Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    out = tmp_path / "elsewhere" / "sd3-medium-4step.safetensors"
    download_file(MODEL_REPO, WEIGHTS, COMMIT, sha256(b"distilled weights"), out)
    assert out.read_bytes() == b"distilled weights" and out.stat().st_nlink == 1


def test_sha256_mismatch_refuses_and_deletes(hub_cache, tmp_path):
    out = tmp_path / "checkpoints" / "sd3-medium-4step.safetensors"
    expected = "ab" * 32
    with pytest.raises(PipelineError) as error:
        download_file(MODEL_REPO, WEIGHTS, COMMIT, expected, out)
    message = only_line(error)
    assert str(out) in message and expected in message and sha256(b"distilled weights") in message
    assert "config 'downloads'" in message
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_snapshot_places_exactly_the_pinned_files(hub_cache, tmp_path, monkeypatch):
    asked = {}
    real_snapshot_download = huggingface_hub.snapshot_download

    def recording_snapshot_download(repo_id, **kwargs):
        asked.update(kwargs)
        return real_snapshot_download(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", recording_snapshot_download)
    pins = {path: sha256(data) for path, data in SD3_FILES.items()}
    out_dir = tmp_path / "checkpoints" / "stable-diffusion-3-medium-diffusers"
    download_snapshot(SD3_REPO, COMMIT, pins, out_dir)
    placed = {path.relative_to(out_dir).as_posix(): path.read_bytes() for path in out_dir.rglob("*") if path.is_file()}
    assert placed == SD3_FILES
    assert asked["allow_patterns"] == sorted(SD3_FILES)
    assert sorted(path.name for path in out_dir.parent.iterdir()) == [out_dir.name]


def test_snapshot_with_one_bad_hash_leaves_no_folder(hub_cache, tmp_path):
    pins = {path: sha256(data) for path, data in SD3_FILES.items()}
    pins["vae/config.json"] = "cd" * 32
    out_dir = tmp_path / "checkpoints" / "stable-diffusion-3-medium-diffusers"
    with pytest.raises(PipelineError) as error:
        download_snapshot(SD3_REPO, COMMIT, pins, out_dir)
    assert "vae/config.json" in only_line(error) and "cd" * 32 in str(error.value)
    assert not out_dir.parent.exists() or list(out_dir.parent.iterdir()) == []


def test_file_missing_from_the_offline_cache_is_one_line(hub_cache, tmp_path):
    with pytest.raises(PipelineError) as error:
        download_file(MODEL_REPO, "checkpoints/sd3-medium-2step.safetensors", COMMIT, "ab" * 32, tmp_path / "x")
    assert "not in the Hugging Face cache" in only_line(error) and "HF_HUB_OFFLINE" in str(error.value)


def test_branch_revision_is_refused(hub_cache, tmp_path):
    with pytest.raises(PipelineError) as error:
        download_file(MODEL_REPO, WEIGHTS, "main", sha256(b"distilled weights"), tmp_path / "w.safetensors")
    assert "'main', not a full commit hash" in only_line(error)
    assert not (tmp_path / "w.safetensors").exists()
    config = {"downloads": {"snapshots": {"sd3": {"repo": SD3_REPO, "revision": "v1.0", "files": {"a": "ab" * 32}}}}}
    with pytest.raises(PipelineError, match=r"config key 'downloads\.snapshots\.sd3\.revision' is 'v1\.0'"):
        planned_downloads(config)


@pytest.mark.parametrize(
    "error",
    [
        GatedRepoError(
            "Access to model is restricted",
            response=httpx2.Response(401, request=httpx2.Request("GET", "https://hf.co")),
        ),
        HfHubHTTPError("403 Forbidden", response=httpx2.Response(403, request=httpx2.Request("GET", "https://hf.co"))),
    ],
)
def test_gated_repo_says_accept_the_license_and_log_in(hub_cache, tmp_path, monkeypatch, error):
    def gated(*args, **kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    with pytest.raises(PipelineError) as raised:
        download_file(SD3_REPO, "vae/config.json", COMMIT, "ab" * 32, tmp_path / "vae.json")
    message = only_line(raised)
    assert f"https://huggingface.co/{SD3_REPO}" in message and "accept the license" in message
    assert "hf auth login" in message


def test_token_never_reaches_output_or_logs(hub_cache, tmp_path):
    env = {**os.environ, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache)}
    pins = tmp_path / "pins.json"
    pins.write_text(json.dumps({path: sha256(data) for path, data in SD3_FILES.items()}))
    out = tmp_path / "out"
    file_args = ["download-file", "--repo", MODEL_REPO, "--filename", WEIGHTS, "--revision", COMMIT]
    snapshot_args = ["download-snapshot", "--repo", SD3_REPO, "--revision", COMMIT, "--pins", str(pins)]
    runs = [
        file_args + ["--sha256", sha256(b"distilled weights"), "--out", str(out / "w.safetensors")],
        file_args + ["--sha256", "ab" * 32, "--out", str(out / "bad.safetensors")],
        snapshot_args + ["--out", str(out / "sd3")],
    ]
    results = [subprocess.run(CLI + args, check=False, capture_output=True, text=True, env=env) for args in runs]
    assert [result.returncode for result in results] == [0, 1, 0]
    assert results[1].stderr.count("\n") == 1 and results[1].stderr.startswith("error: ")
    written = [path.read_bytes() for path in out.rglob("*") if path.is_file()]
    assert len(written) == 1 + len(SD3_FILES)
    assert not any(TOKEN in result.stdout + result.stderr for result in results)
    assert not any(TOKEN.encode() in data for data in written)


def run_snakemake(workdir: Path, config: str, *args: str) -> subprocess.CompletedProcess:
    """The workflow with rules/downloads.smk, whether or not the Snakefile includes it yet."""
    snakefile = REPO / "Snakefile"
    if 'include: "rules/downloads.smk"' not in snakefile.read_text():
        snakefile = workdir / "Snakefile.downloads"
        snakefile.write_text(f'include: "{REPO / "Snakefile"}"\ninclude: "{REPO / "rules" / "downloads.smk"}"\n')
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(workdir)]
    return subprocess.run(
        command + ["--configfile", config, *args], check=False, capture_output=True, text=True, cwd=workdir
    )


def test_workflow_plans_one_rule_per_download_and_none_without_the_key(tmp_path):
    workdir = new_workdir(tmp_path)
    config = yaml.safe_load((workdir / "config" / "demo.yaml").read_text())
    pins = {path: sha256(data) for path, data in SD3_FILES.items()}
    config["downloads"] = {
        "root": "downloaded",
        "files": {
            "sd3-medium-4step.safetensors": {
                "repo": MODEL_REPO,
                "filename": WEIGHTS,
                "revision": COMMIT,
                "sha256": "ab" * 32,
            }
        },
        "snapshots": {"stable-diffusion-3-medium-diffusers": {"repo": SD3_REPO, "revision": COMMIT, "files": pins}},
    }
    (workdir / "config" / "downloads.yaml").write_text(yaml.safe_dump(config))
    targets = ["downloaded/sd3-medium-4step.safetensors", "downloaded/stable-diffusion-3-medium-diffusers"]
    planned = run_snakemake(workdir, "config/downloads.yaml", "-n", *targets)
    assert planned.returncode == 0, planned.stderr[-2000:]
    stats = planned.stdout.split("Job stats:", 1)[1]
    assert "download_file_sd3_medium_4step_safetensors" in stats
    assert "download_snapshot_stable_diffusion_3_medium_diffusers" in stats
    without = run_snakemake(workdir, "config/demo.yaml", "--list-rules")
    assert without.returncode == 0 and "synthetic_transformer" in without.stdout
    assert "download" not in without.stdout
