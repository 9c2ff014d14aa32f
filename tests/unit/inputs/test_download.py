"""Pinned Hub downloads from a hand-made Hugging Face cache, HF_HUB_OFFLINE=1 (no network; conftest's hub_cache)."""

import json
import os
import subprocess
import sys

import httpx2
import huggingface_hub
import pytest
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError
from offline_hub import COMMIT, MODEL_REPO, SD3_FILES, SD3_REPO, WEIGHTS, sha256

from sd3coreml.errors import PipelineError
from sd3coreml.inputs.download import download_file, download_snapshot, planned_downloads

TOKEN = "hf_secret123"
CLI = [sys.executable, "-m", "sd3coreml"]


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
