"""verify-folder: a folder against its SHA256SUMS and manifest.json, every problem named."""

import shutil
import subprocess
import sys

from harness import STAGE, make_entries, sha256_check_command

from sd3coreml import checksums
from sd3coreml.release import folder, folder_check

# Stage1..3 hold blocks [0,2), [2,4), [4,5): Stage0..Stage3 in all.
MANIFEST = {
    "config": {"stage_block_ranges": [[0, 2], [2, 4], [4, 5]]},
    "inputs": {"transformer_weights": "abc123"},
}


def built_folder(tmp_path, name="coremlsd3_4step_packages", payload=b""):
    entries = make_entries(tmp_path / f"src-{name}", stage_count=4)
    if payload:
        (entries[f"{STAGE}2.mlpackage"] / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(payload)
    out_dir = tmp_path / name
    folder.assemble_folder(entries, out_dir, MANIFEST)
    return out_dir


def regenerate_sums(out_dir):
    """What a hand fix looks like: `sha256sum` over whatever is in the folder now."""
    checksums.write_sha256sums(out_dir)


def test_a_clean_folder_has_no_problems_and_sha256sum_agrees(tmp_path):
    out_dir = built_folder(tmp_path)
    (out_dir / ".snakemake_timestamp").write_text("")  # Snakemake adds it after the job
    assert folder_check.folder_problems(out_dir) == []
    result = subprocess.run([*sha256_check_command(), "--quiet", "SHA256SUMS"], cwd=out_dir, capture_output=True)
    assert result.returncode == 0


def test_missing_modified_and_extra_files_are_each_named(tmp_path):
    out_dir = built_folder(tmp_path)
    (out_dir / "vocab.json").write_text("{}")
    (out_dir / "merges.txt").unlink()
    (out_dir / "stray.txt").write_text("left behind")
    assert folder_check.folder_problems(out_dir) == [
        "missing: merges.txt",
        "modified: vocab.json",
        "extra: stray.txt",
    ]


def test_a_stage_left_from_an_older_layout_is_stale_even_with_regenerated_sums(tmp_path):
    out_dir = built_folder(tmp_path)
    shutil.copytree(out_dir / f"{STAGE}3.mlpackage", out_dir / f"{STAGE}7.mlpackage")
    assert f"extra: {STAGE}7.mlpackage/Manifest.json" in folder_check.folder_problems(out_dir)
    regenerate_sums(out_dir)
    problems = folder_check.folder_problems(out_dir)
    assert f"stale: {STAGE}7.mlpackage (the layout in manifest.json is Stage0..Stage3)" in problems
    assert (
        f"stale: {STAGE}7.mlpackage/Manifest.json (in SHA256SUMS but not in manifest.json: "
        "left from another build)" in problems
    )


def test_a_stage_from_another_build_is_foreign_even_with_regenerated_sums(tmp_path):
    out_dir = built_folder(tmp_path)
    other = built_folder(tmp_path, "coremlsd3_2step_packages", payload=b"other weights")
    model = f"{STAGE}2.mlpackage/Data/com.apple.CoreML/model.mlmodel"
    shutil.rmtree(out_dir / f"{STAGE}2.mlpackage")
    shutil.copytree(other / f"{STAGE}2.mlpackage", out_dir / f"{STAGE}2.mlpackage")
    assert folder_check.folder_problems(out_dir) == [f"modified: {model}"]
    regenerate_sums(out_dir)
    assert folder_check.folder_problems(out_dir) == [
        f"foreign: {model} (matches SHA256SUMS but not manifest.json: from another build)"
    ]


def test_an_adaln_model_is_foreign_even_with_regenerated_sums(tmp_path):
    """The app would switch to AdaLN stages, which no longer take modulation_inputs."""
    out_dir = built_folder(tmp_path)
    shutil.copytree(out_dir / f"{STAGE}1.mlpackage", out_dir / "MultiModalDiffusionTransformerAdaLN.mlpackage")
    regenerate_sums(out_dir)
    assert (
        "foreign: MultiModalDiffusionTransformerAdaLN.mlpackage (the app would then feed its stages without "
        "modulation_inputs; remove it)"
    ) in folder_check.folder_problems(out_dir)


def test_a_hand_edited_manifest_is_stale(tmp_path):
    out_dir = built_folder(tmp_path)
    manifest_path = out_dir / "manifest.json"
    manifest_path.write_text(manifest_path.read_text().replace("abc123", "abc124"))
    regenerate_sums(out_dir)
    assert folder_check.folder_problems(out_dir) == ["stale: manifest.json (its build_id does not match its contents)"]


def test_missing_sums_and_manifest_are_named(tmp_path):
    out_dir = built_folder(tmp_path)
    (out_dir / "SHA256SUMS").unlink()
    (out_dir / "manifest.json").unlink()
    assert folder_check.folder_problems(out_dir) == ["missing: SHA256SUMS", "missing: manifest.json"]


def verify_folder(*folders):
    # A subprocess: the command keeps coremltools from importing torch and friends, which
    # must not happen inside this test session.
    command = [sys.executable, "-m", "sd3coreml", "verify-folder", *map(str, folders)]
    return subprocess.run(command, capture_output=True, check=False, text=True)


def test_cli_exit_codes_and_one_line_per_problem(tmp_path):
    clean, broken = built_folder(tmp_path), built_folder(tmp_path, "coremlsd3_2step_packages")
    (broken / "stray.txt").write_text("x")
    result = verify_folder(clean)
    assert result.returncode == 0 and "OK" in result.stdout
    result = verify_folder(clean, broken)
    assert result.returncode == 1
    assert f"{broken}: extra: stray.txt" in result.stdout.splitlines()
    assert result.stderr.count("\n") == 1 and f"{broken} (1)" in result.stderr, result.stderr
    result = verify_folder(tmp_path / "nowhere")
    assert result.returncode == 1 and "no such folder" in result.stderr
