"""Pinned Hub downloads, from a hand-made Hugging Face cache with HF_HUB_OFFLINE=1 (no network)."""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx2
import huggingface_hub
import pytest
import yaml
from harness import new_workdir, snakemake
from huggingface_hub import constants
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

from sd3coreml.errors import PipelineError
from sd3coreml.inputs.download import download_file, download_snapshot, planned_downloads
from sd3coreml.synthetic.checkpoints import write_synthetic_transformer

MODEL_REPO = "Owner/MobileDiffuser-test"
SD3_REPO = "stabilityai/stable-diffusion-3-medium-diffusers"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
WEIGHTS = "checkpoints/sd3-medium-4step.safetensors"
TINY_WEIGHTS = "checkpoints/tiny-4step.safetensors"
DOWNLOADS_CONFIG = "config/downloads.yaml"
DOWNLOADED = ["downloaded/tiny-4step.safetensors", "downloaded/sd3"]
AWKWARD_PATH = 'tokenizer/notes on it\'s "tokens".json'
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
CLI = [sys.executable, "-m", "sd3coreml"]


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


def job_blocks(dry_run: str) -> list[str]:
    """The jobs of a dry run, each `rule NAME:` with its lines, in the order Snakemake would run them."""
    return re.split(r"\n(?=(?:local)?rule \w+:)", dry_run.split("Job stats:", 1)[1])[1:]


def test_download_rules_run_offline_and_the_conversion_reads_their_output(hub_cache, tmp_path):
    """The rules for real: hub cache offline, pins through the shell, then the build plans on the download."""
    workdir = new_workdir(tmp_path / "work")
    write_synthetic_transformer("tiny", 4, tmp_path / "tiny.safetensors", tmp_path / "tiny.json")
    tiny = (tmp_path / "tiny.safetensors").read_bytes()
    fill_cache(hub_cache, MODEL_REPO, {TINY_WEIGHTS: tiny})
    # A path the shell must not split or unquote on its way to --pins-json.
    files = {**SD3_FILES, AWKWARD_PATH: b'{"said": "it\'s"}\n'}
    fill_cache(hub_cache, SD3_REPO, {AWKWARD_PATH: files[AWKWARD_PATH]})
    config = yaml.safe_load((workdir / "config" / "demo.yaml").read_text())
    config["models"]["4step"]["weights"] = "downloaded/tiny-4step.safetensors"
    config["downloads"] = {
        "root": "downloaded",
        "files": {"tiny-4step.safetensors": {"repo": MODEL_REPO, "filename": TINY_WEIGHTS, "revision": COMMIT,
                                             "sha256": sha256(tiny)}},
        "snapshots": {"sd3": {"repo": SD3_REPO, "revision": COMMIT,
                              "files": {path: sha256(data) for path, data in files.items()}}},
    }  # fmt: skip
    (workdir / DOWNLOADS_CONFIG).write_text(yaml.safe_dump(config))

    planned = snakemake(workdir, "-n", "coremlsd3_4step_packages", config=DOWNLOADS_CONFIG)
    jobs = job_blocks(planned.stdout)
    names = [job.split(":", 1)[0].removeprefix("local").removeprefix("rule ") for job in jobs]
    first_conversion = next(index for index, name in enumerate(names) if name.startswith("mmdit_"))
    assert names.index("download_file_tiny_4step_safetensors") < first_conversion
    assert "downloaded/tiny-4step.safetensors" in jobs[first_conversion].split("output:")[0]

    snakemake(workdir, "-c2", *DOWNLOADED, config=DOWNLOADS_CONFIG)
    assert (workdir / "downloaded" / "tiny-4step.safetensors").read_bytes() == tiny
    placed = workdir / "downloaded" / "sd3"
    placed_files = {
        path.relative_to(placed).as_posix(): path.read_bytes() for path in placed.rglob("*") if path.is_file()
    }
    assert placed_files == {**files, ".snakemake_timestamp": b""}  # directory()'s marker

    without = snakemake(workdir, "--list-rules")
    assert "synthetic_transformer" in without.stdout
    assert "download" not in without.stdout
