"""Content hashes and SHA256SUMS: stable, blind to Snakemake's marker, readable by `sha256sum -c` and `shasum`."""

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import make_package, sha256_check_command

from sd3coreml import checksums
from sd3coreml.errors import PipelineError


def run_sha256sum_check(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*sha256_check_command(), "SHA256SUMS"], cwd=folder, capture_output=True, text=True)


def test_file_sha256_streams_large_file(tmp_path):
    data = bytes(range(256)) * (3 * checksums.CHUNK_BYTES // 256 + 7)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert checksums.file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_tree_hash_of_a_file_is_its_sha256(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_bytes(b'{"a": 1}')
    assert checksums.tree_sha256(path) == hashlib.sha256(b'{"a": 1}').hexdigest()


def test_tree_hash_ignores_snakemake_marker_at_any_depth(tmp_path):
    package = make_package(tmp_path, "TextEncoder.mlpackage")
    before = checksums.tree_sha256(package)
    (package / ".snakemake_timestamp").write_text("")
    (package / "Data" / ".snakemake_timestamp").write_text("x")
    assert checksums.tree_sha256(package) == before


def test_tree_hash_ignores_location_and_creation_order(tmp_path):
    first = make_package(tmp_path / "a", "X.mlpackage")
    (first / "Data" / "extra.bin").write_bytes(b"1")
    second = tmp_path / "b" / "Y.mlpackage"
    (second / "Data" / "com.apple.CoreML").mkdir(parents=True)
    (second / "Data" / "extra.bin").write_bytes(b"1")
    (second / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"weights")
    (second / "Manifest.json").write_text('{"fileFormatVersion": "1.0.0"}\n')
    assert checksums.tree_sha256(first) == checksums.tree_sha256(second)


@pytest.mark.parametrize(
    "change",
    [
        lambda p: (p / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"weightz"),
        lambda p: (p / "Manifest.json").rename(p / "Manifest2.json"),
        lambda p: (p / "Data" / "com.apple.CoreML").rename(p / "Data" / "com.apple.CoreML2"),
        lambda p: (p / "empty.bin").write_bytes(b""),
    ],
    ids=["content", "file-name", "folder-name", "new-empty-file"],
)
def test_tree_hash_changes_on_any_content_or_name_change(tmp_path, change):
    package = make_package(tmp_path, "TextEncoder.mlpackage")
    before = checksums.tree_sha256(package)
    change(package)
    assert checksums.tree_sha256(package) != before


def test_tree_hash_refuses_symlinks(tmp_path):
    package = make_package(tmp_path, "TextEncoder.mlpackage")
    (package / "link.bin").symlink_to(package / "Manifest.json")
    with pytest.raises(PipelineError, match="link.bin"):
        checksums.tree_sha256(package)


def make_resource_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "coremlsd3_4step"
    folder.mkdir()
    make_package(folder, "TextEncoder.mlpackage", b"clip-l")
    make_package(folder, "TextEncoder2.mlpackage", b"clip-g")
    (folder / "vocab.json").write_text('{"a": 0}\n')
    (folder / "Bmerges.txt").write_text("a b\n")
    (folder / "manifest.json").write_text('{"build_id": "x"}\n')
    (folder / ".snakemake_timestamp").write_text("")
    (folder / "TextEncoder.mlpackage" / ".snakemake_timestamp").write_text("")
    return folder


def test_sha256sums_passes_real_sha256sum_and_fails_after_an_edit(tmp_path):
    folder = make_resource_folder(tmp_path)
    sums_path = checksums.write_sha256sums(folder)
    assert sums_path == folder / "SHA256SUMS"
    checked = run_sha256sum_check(folder)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    (folder / "TextEncoder2.mlpackage" / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"clip-G")
    checked = run_sha256sum_check(folder)
    assert checked.returncode != 0
    assert "TextEncoder2.mlpackage/Data/com.apple.CoreML/model.mlmodel: FAILED" in checked.stdout


@pytest.mark.skipif(shutil.which("shasum") is None, reason="no shasum on PATH (Perl's; macOS always has it)")
def test_shasum_the_fallback_of_macos_14_reads_the_same_file(tmp_path):
    folder = make_resource_folder(tmp_path)
    checksums.write_sha256sums(folder)
    command = ["shasum", "-a", "256", "-c", "--quiet", "--strict", "SHA256SUMS"]
    checked = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    assert checked.returncode == 0 and checked.stdout == "", checked.stdout + checked.stderr

    (folder / "vocab.json").write_text("{}")
    checked = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    assert checked.returncode != 0
    assert checked.stdout == "vocab.json: FAILED\n"


def test_sha256sums_lists_every_file_sorted_by_bytes_but_not_itself_or_markers(tmp_path):
    folder = make_resource_folder(tmp_path)
    checksums.write_sha256sums(folder)
    checksums.write_sha256sums(folder)  # a second run must not list the first SHA256SUMS
    lines = (folder / "SHA256SUMS").read_text().splitlines()
    paths = [line.split("  ", 1)[1] for line in lines]
    assert paths == sorted(paths, key=lambda path: path.encode("utf-8"))
    c_sorted = subprocess.run(
        ["sort"], input="\n".join(paths) + "\n", capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"}
    ).stdout.splitlines()
    assert paths == c_sorted
    assert "manifest.json" in paths
    assert "TextEncoder.mlpackage/Data/com.apple.CoreML/model.mlmodel" in paths
    assert paths.index("TextEncoder.mlpackage/Manifest.json") < paths.index("TextEncoder2.mlpackage/Manifest.json")
    assert not any(path.endswith(".snakemake_timestamp") or path == "SHA256SUMS" for path in paths)
    assert len(paths) == 7


def test_check_sha256sums_reports_missing_modified_and_extra(tmp_path):
    folder = make_resource_folder(tmp_path)
    checksums.write_sha256sums(folder)
    assert checksums.check_sha256sums(folder) == []

    (folder / "vocab.json").write_text('{"a": 1}\n')
    (folder / "Bmerges.txt").unlink()
    (folder / "MultiModalDiffusionTransformerStage7.mlpackage").mkdir()
    (folder / "MultiModalDiffusionTransformerStage7.mlpackage" / "Manifest.json").write_text("{}")
    (folder / "Data.snakemake_timestamp").write_text("")  # only the exact marker name is ignored
    (folder / "TextEncoder2.mlpackage" / ".snakemake_timestamp").write_text("")
    assert checksums.check_sha256sums(folder) == [
        "missing: Bmerges.txt",
        "modified: vocab.json",
        "extra: Data.snakemake_timestamp",
        "extra: MultiModalDiffusionTransformerStage7.mlpackage/Manifest.json",
    ]


def test_check_sha256sums_without_sums_file(tmp_path):
    assert checksums.check_sha256sums(tmp_path) == ["missing: SHA256SUMS"]


def test_malformed_sums_line_is_a_pipeline_error(tmp_path):
    (tmp_path / "SHA256SUMS").write_text("not a checksum line\n")
    with pytest.raises(PipelineError, match="SHA256SUMS:1"):
        checksums.check_sha256sums(tmp_path)


def test_file_names_sha256sum_would_escape_are_refused(tmp_path):
    (tmp_path / "bad\\name.txt").write_text("x")
    with pytest.raises(PipelineError, match="backslash or line break"):
        checksums.write_sha256sums(tmp_path)
