"""The demo's real packages folders under the release checks: compile-folder, verify-folder, verify_folders."""

import shutil

import pytest
from harness import FAKE_COMPILER_TEMPLATE, STAGE, copy_tree, new_workdir, snakemake

from sd3coreml import checksums
from sd3coreml.errors import PipelineError
from sd3coreml.release import compile, folder_check


@pytest.fixture
def demo_packages(demo_build, tmp_path):
    """A copy of the session's 4-step packages folder, real packages and manifest."""
    copy = tmp_path / "coremlsd3_4step_packages"
    copy_tree(demo_build / "results" / "demo" / copy.name, copy)
    return copy


def test_compile_folder_refuses_a_stale_stage_even_with_regenerated_sums(demo_packages, tmp_path):
    shutil.copytree(demo_packages / f"{STAGE}3.mlpackage", demo_packages / f"{STAGE}4.mlpackage")
    checksums.write_sha256sums(demo_packages)  # what a hand fix looks like
    with pytest.raises(PipelineError) as error:
        compile.compile_folder(demo_packages, tmp_path / "app", FAKE_COMPILER_TEMPLATE)
    message = str(error.value)
    assert (
        "\n" not in message and f"stale: {STAGE}4.mlpackage (the layout in manifest.json is Stage0..Stage3)" in message
    )
    assert not (tmp_path / "app").exists()


def test_compile_folder_ignores_finder_files_and_refuses_any_other_extra(demo_packages, tmp_path):
    (demo_packages / ".DS_Store").write_bytes(b"Finder")
    (demo_packages / f"._{STAGE}1.mlpackage").write_bytes(b"AppleDouble")
    (demo_packages / f"{STAGE}1.mlpackage" / ".DS_Store").write_bytes(b"Finder")
    app_dir = tmp_path / "coremlsd3_4step"
    compile.compile_folder(demo_packages, app_dir, FAKE_COMPILER_TEMPLATE)
    assert not [path for path in app_dir.rglob("*") if checksums.is_finder_file(path.name)]
    assert folder_check.folder_problems(app_dir) == []
    (demo_packages / "notes.txt").write_text("left by hand")
    with pytest.raises(PipelineError, match="extra: notes.txt"):
        compile.compile_folder(demo_packages, tmp_path / "other", FAKE_COMPILER_TEMPLATE)


def test_two_stages_swapped_in_a_built_folder_are_named_by_the_blocks_they_hold(demo_packages, tmp_path):
    """Real packages record their block range; even over regenerated SHA256SUMS, each swapped stage is named."""
    out_dir = demo_packages
    first, second, aside = out_dir / f"{STAGE}1.mlpackage", out_dir / f"{STAGE}2.mlpackage", tmp_path / "aside"
    first.rename(aside)
    second.rename(first)
    aside.rename(second)
    checksums.write_sha256sums(out_dir)  # what a hand fix looks like
    # The demo's layout [1, 2, 2]: Stage1 holds blocks 0-1, Stage2 blocks 1-3.
    problems = [problem for problem in folder_check.folder_problems(out_dir) if ".mlpackage (" in problem]
    assert problems == [
        f"foreign: {STAGE}1.mlpackage (holds MMDiT blocks 1-3; its place in the layout needs MMDiT blocks 0-1)",
        f"foreign: {STAGE}2.mlpackage (holds MMDiT blocks 0-1; its place in the layout needs MMDiT blocks 1-3)",
    ]


def test_snakemake_verify_folders_checks_the_configured_folders_and_builds_nothing(demo_build, tmp_path):
    workdir = new_workdir(tmp_path / "work")
    clean, stale = (workdir / "results" / "demo" / f"coremlsd3_{model}_packages" for model in ("4step", "2step"))
    for folder_path in (clean, stale):
        copy_tree(demo_build / "results" / "demo" / folder_path.name, folder_path)
    shutil.copytree(stale / f"{STAGE}3.mlpackage", stale / f"{STAGE}7.mlpackage")
    result = snakemake(workdir, "-c1", "verify_folders", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"{clean.relative_to(workdir)}: OK" in output
    assert f"stale: {STAGE}7.mlpackage (the layout in manifest.json is Stage0..Stage3)" in output
    assert sorted(path.name for path in (workdir / "results" / "demo").iterdir()) == sorted(
        [clean.name, stale.name, "logs"]
    )
