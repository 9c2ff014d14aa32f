"""release-check: what the app's downloader (skip by size, never delete) would get wrong."""

import hashlib
import json
import shutil
import subprocess
import sys

import pytest
from harness import copy_tree

from sd3coreml.release.downloader import folder_files, listed_files, release_hazards

STAGE = "MultiModalDiffusionTransformerStage"


@pytest.fixture(scope="module")
def releases(demo_build, tmp_path_factory):
    """Copies of the demo folders: the 4-step and 2-step share a layout and differ in weights."""
    root = tmp_path_factory.mktemp("releases")
    for model in ("4step", "2step"):
        copy_tree(demo_build / "results" / "demo" / f"coremlsd3_{model}_packages", root / model)
    return root


def hub_listing(folder, name: str) -> list[dict]:
    """What /api/models/<repo>/tree/main/<name>?recursive=1 answers: LFS files with their sha256."""
    entries = [{"type": "directory", "path": name, "oid": "0" * 40, "size": 0}]
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        entry = {"type": "file", "path": f"{name}/{path.relative_to(folder).as_posix()}", "size": len(data)}
        if len(data) > 10_000:
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data)}
        entry["oid"] = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        entries.append(entry)
    return entries


def skipped(hazards: list[str]) -> set[str]:
    return {line.split(": ", 1)[1].split(" (")[0] for line in hazards if line.startswith("skipped for its size")}


def test_changed_weights_of_unchanged_size_are_named_whatever_old_is(releases, tmp_path):
    old, new = releases / "4step", releases / "2step"
    from_folder = release_hazards(listed_files(old), folder_files(new))
    weights = {f"{STAGE}{index}.mlpackage/Data/com.apple.CoreML/weights/weight.bin" for index in range(4)}
    assert weights <= skipped(from_folder)
    # Shared by both models: the same bytes, nothing to say.
    assert not any(name.startswith(("TextEncoder", "VAEDecoder", "vocab", "merges")) for name in skipped(from_folder))
    (tmp_path / "tree.json").write_text(json.dumps(hub_listing(old, "coremlsd3_4step")))
    assert release_hazards(listed_files(tmp_path / "tree.json"), folder_files(new)) == from_folder
    from_manifest = release_hazards(listed_files(old / "manifest.json"), folder_files(new))
    assert skipped(from_manifest) == skipped(from_folder) - {"manifest.json", "SHA256SUMS"}


def test_a_dropped_stage_is_left_behind_and_finder_files_are_ignored(releases, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(releases / "4step", old)
    shutil.copytree(old / f"{STAGE}3.mlpackage", old / f"{STAGE}4.mlpackage")
    (old / ".DS_Store").write_bytes(b"Finder")
    hazards = release_hazards(listed_files(old), folder_files(releases / "4step"))
    left = [line for line in hazards if line.startswith("left behind")]
    assert left and all(f"{STAGE}4.mlpackage/" in line and line.endswith("and runs it)") for line in left)
    assert len(left) == len([path for path in (old / f"{STAGE}4.mlpackage").rglob("*") if path.is_file()])


def test_cli_exits_1_with_one_line_and_0_for_the_same_release(releases):
    def release_check(old, new):
        command = [sys.executable, "-m", "sd3coreml", "release-check", str(old), str(new)]
        return subprocess.run(command, capture_output=True, text=True, check=False)

    hazards = release_check(releases / "4step", releases / "2step")
    assert hazards.returncode == 1 and hazards.stderr.count("\n") == 1
    assert "keep a folder's layout across releases" in hazards.stderr and "reinstall the app" in hazards.stderr
    assert f"{releases / '2step'}: skipped for its size: {STAGE}1.mlpackage" in hazards.stdout
    same = release_check(releases / "4step", releases / "4step")
    assert same.returncode == 0 and "every file reaches phones" in same.stdout
