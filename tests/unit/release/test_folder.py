"""Assembling resource folders: whole-folder replacement, contract names, deterministic manifest."""

import json
import subprocess
from pathlib import Path

import pytest
from harness import STAGE, make_entries, sha256_check_command

from sd3coreml import checksums
from sd3coreml.commands import main as cli
from sd3coreml.errors import PipelineError
from sd3coreml.release import folder
from sd3coreml.release import manifest as manifests

MANIFEST = {"config": {"stage_sizes": [4, 4, 4, 4, 4, 4]}, "inputs": {"transformer": "abc123"}}


def read_manifest(out_dir: Path) -> dict:
    return json.loads((out_dir / "manifest.json").read_text())


def leftovers(parent: Path) -> list[str]:
    return sorted(path.name for path in parent.iterdir() if path.name.startswith("."))


def test_assembled_folder_holds_entries_manifest_and_sums(tmp_path):
    entries = make_entries(tmp_path / "src", stage_count=7)
    out_dir = tmp_path / "results" / "coremlsd3_4step_packages"
    folder.assemble_folder(entries, out_dir, MANIFEST)

    assert sorted(path.name for path in out_dir.iterdir()) == sorted([*entries, "manifest.json", "SHA256SUMS"])
    assert not list(out_dir.rglob(".snakemake_timestamp"))
    assert leftovers(out_dir.parent) == []
    stage3 = out_dir / f"{STAGE}3.mlpackage" / "Data" / "com.apple.CoreML" / "model.mlmodel"
    assert stage3.read_bytes() == b"stage3"

    manifest = read_manifest(out_dir)
    assert manifest["config"] == MANIFEST["config"]
    assert manifest["files"]["vocab.json"] == {"sha256": checksums.file_sha256(entries["vocab.json"]), "size": 9}
    assert set(manifest["files"]) == {rel for rel, _ in checksums.folder_files(out_dir)} - {"manifest.json"}
    text = (out_dir / "manifest.json").read_text()
    assert text == json.dumps(manifest, indent=2, sort_keys=True) + "\n"

    checked = subprocess.run([*sha256_check_command(), "SHA256SUMS"], cwd=out_dir, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "manifest.json: OK" in checked.stdout


def test_reassembling_with_fewer_stages_removes_the_stale_stage(tmp_path):
    out_dir = tmp_path / "coremlsd3_4step"
    folder.assemble_folder(make_entries(tmp_path / "old", stage_count=8), out_dir, MANIFEST)
    assert (out_dir / f"{STAGE}7.mlpackage").is_dir()

    folder.assemble_folder(make_entries(tmp_path / "new", stage_count=7), out_dir, MANIFEST)
    assert not (out_dir / f"{STAGE}7.mlpackage").exists()
    assert (out_dir / f"{STAGE}6.mlpackage").is_dir()
    assert checksums.check_sha256sums(out_dir) == []
    assert leftovers(tmp_path) == []


def test_a_failing_copy_leaves_the_old_folder_intact(tmp_path, monkeypatch):
    out_dir = tmp_path / "coremlsd3_4step"
    folder.assemble_folder(make_entries(tmp_path / "old", stage_count=8), out_dir, MANIFEST)
    before = checksums.tree_sha256(out_dir)

    real_copyfile = folder.shutil.copyfile
    calls = []

    def copyfile_failing_on_the_fifth(source, target):
        calls.append(source)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        return real_copyfile(source, target)

    monkeypatch.setattr(folder.shutil, "copyfile", copyfile_failing_on_the_fifth)
    with pytest.raises(PipelineError, match="No space left on device"):
        folder.assemble_folder(make_entries(tmp_path / "new", stage_count=7), out_dir, MANIFEST)

    assert checksums.tree_sha256(out_dir) == before
    assert (out_dir / f"{STAGE}7.mlpackage").is_dir()
    assert leftovers(tmp_path) == []


def test_a_failing_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    out_dir = tmp_path / "coremlsd3_4step"
    folder.assemble_folder(make_entries(tmp_path / "old", stage_count=2), out_dir, MANIFEST)
    before = checksums.tree_sha256(out_dir)
    real_rename = folder.os.rename

    def rename_refusing_the_new_folder(source, target):
        if ".tmp-" in Path(source).name:
            raise OSError(18, "Invalid cross-device link")
        return real_rename(source, target)

    monkeypatch.setattr(folder.os, "rename", rename_refusing_the_new_folder)
    with pytest.raises(OSError):
        folder.assemble_folder(make_entries(tmp_path / "new", stage_count=3), out_dir, MANIFEST)
    assert checksums.tree_sha256(out_dir) == before
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ([f"{STAGE}0.mlpackage", f"{STAGE}1.mlpackage", f"{STAGE}3.mlpackage"], r"\[0, 1, 3\]"),
        ([f"{STAGE}1.mlpackage", f"{STAGE}2.mlpackage"], r"\[1, 2\]"),
        ([f"{STAGE}0.mlpackage", f"{STAGE}01.mlpackage"], "leading zeros"),
        ([f"{STAGE}0.mlpackage", f"{STAGE}1.mlpackage", f"{STAGE}x.mlpackage"], "rename it"),
        ([f"{STAGE}0.mlpackage", f"{STAGE}1.mlmodelc"], "mix"),
        (["TextEncoder.mlmodelc", "VAEDecoder.mlpackage"], "mix"),
        (["sub/vocab.json"], "plain name"),
        (["..vocab.json"], "plain name"),
        ([".snakemake_timestamp"], "plain name"),
        (["manifest.json"], "assemble_folder itself"),
        (["SHA256SUMS"], "assemble_folder itself"),
    ],
)
def test_bad_entry_names_are_refused(names, message):
    with pytest.raises(PipelineError, match=message):
        folder.validate_entry_names(names)


def test_a_stage_gap_is_refused_before_touching_the_old_folder(tmp_path):
    out_dir = tmp_path / "coremlsd3_4step"
    folder.assemble_folder(make_entries(tmp_path / "old", stage_count=3), out_dir, MANIFEST)
    before = checksums.tree_sha256(out_dir)
    entries = make_entries(tmp_path / "new", stage_count=4)
    del entries[f"{STAGE}2.mlpackage"]
    with pytest.raises(PipelineError, match="without gaps"):
        folder.assemble_folder(entries, out_dir, MANIFEST)
    assert checksums.tree_sha256(out_dir) == before


def test_build_id_is_stable_and_follows_the_request_not_the_files(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    folder.assemble_folder(make_entries(tmp_path / "a", stage_count=3), first, MANIFEST)
    folder.assemble_folder(make_entries(tmp_path / "b", stage_count=3), second, MANIFEST)
    assert (first / "manifest.json").read_bytes() == (second / "manifest.json").read_bytes()
    assert (first / "SHA256SUMS").read_bytes() == (second / "SHA256SUMS").read_bytes()
    build_id = read_manifest(first)["build_id"]
    assert build_id == manifests.build_id(MANIFEST) and len(build_id) == 64

    # Other bytes under the same request: same id, other file record (verify-folder tells them apart).
    changed_file = make_entries(tmp_path / "c", stage_count=3)
    (changed_file["merges.txt"]).write_text("#version: 0.2\na c\n")
    folder.assemble_folder(changed_file, tmp_path / "third", MANIFEST)
    third = read_manifest(tmp_path / "third")
    assert third["build_id"] == build_id
    assert third["files"]["merges.txt"] != read_manifest(first)["files"]["merges.txt"]

    for index, changed in enumerate([{"config": {"stage_sizes": [6, 6, 6, 6]}}, {"inputs": {"transformer": "def"}}]):
        out_dir = tmp_path / f"changed{index}"
        folder.assemble_folder(make_entries(tmp_path / f"d{index}", stage_count=3), out_dir, {**MANIFEST, **changed})
        assert read_manifest(out_dir)["build_id"] != build_id


def test_missing_source_names_the_entry(tmp_path):
    entries = make_entries(tmp_path / "src", stage_count=2)
    entries["vocab.json"] = tmp_path / "nowhere" / "vocab.json"
    with pytest.raises(PipelineError, match="'vocab.json'.*does not exist"):
        folder.assemble_folder(entries, tmp_path / "out", MANIFEST)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("manifest", [{"files": {}}, {"build_id": "x"}, {"path": Path("x")}, {"psnr": float("nan")}])
def test_manifest_that_cannot_be_written_as_given_is_refused(tmp_path, manifest):
    with pytest.raises(PipelineError, match="manifest"):
        folder.assemble_folder(make_entries(tmp_path / "src", stage_count=2), tmp_path / "out", manifest)
    assert leftovers(tmp_path) == []


def test_cli_assemble_folder_from_a_json_spec(tmp_path):
    entries = make_entries(tmp_path / "src", stage_count=2)
    spec = tmp_path / "spec.json"
    spec_entries = {name: str(path) for name, path in entries.items()}
    spec.write_text(json.dumps({"entries": spec_entries, "manifest": MANIFEST}))
    out_dir = tmp_path / "coremlsd3_2step_packages"
    assert cli.main(["assemble-folder", "--spec", str(spec), "--out", str(out_dir)]) == 0
    assert read_manifest(out_dir)["inputs"] == MANIFEST["inputs"]
    assert checksums.check_sha256sums(out_dir) == []

    spec.write_text(json.dumps({"entries": ["vocab.json"]}))
    assert cli.main(["assemble-folder", "--spec", str(spec), "--out", str(out_dir)]) == 1


def test_input_files_are_recorded_by_hash_not_path(tmp_path):
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"tensor bytes")
    manifest = manifests.hash_inputs({"input_files": {"weights": str(weights)}, "inputs": {"given": "abc"}})
    assert manifest == {"inputs": {"given": "abc", "weights": checksums.file_sha256(weights)}}
    assert str(tmp_path) not in json.dumps(manifest)
