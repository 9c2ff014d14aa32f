"""cleanup: what no configured target references goes, inputs and referenced artifacts stay."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness import copy_of_build, snakemake

from sd3coreml.errors import PipelineError
from sd3coreml.release.cleanup import clean, unreferenced


def touch(path: Path, size: int = 4096) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "results"
    stage = root / "mmdit/m/iOS18/latent16x16"
    for name in ("blocks0-2.fp16.mlpackage", "blocks0-4.fp16.mlpackage"):
        touch(stage / name / "Data/weight.bin")
    touch(root / "fidelity/mmdit/m/iOS18/latent16x16/blocks0-4.fp16.json")
    touch(root / "checkpoints/tiny.safetensors")
    touch(root / "compiled/ios18.2/old.mlmodelc/model.mil")
    touch(root / "coremlsd3_m_packages/SHA256SUMS")
    touch(root / "coremlsd3_m_packages/Stage1.mlpackage/Data/weight.bin")
    touch(root / "logs/mmdit/m/iOS18/latent16x16/blocks0-4.log")
    keep = {stage / "blocks0-2.fp16.mlpackage", root / "coremlsd3_m_packages/SHA256SUMS"}
    return root, keep


def test_only_unreferenced_artifacts_are_found(tree):
    root, keep = tree
    found = {path.relative_to(root).as_posix() for path in unreferenced(root, keep)}
    # A family nothing references goes whole; a folder comes with its SHA256SUMS.
    assert found == {
        "mmdit/m/iOS18/latent16x16/blocks0-4.fp16.mlpackage",
        "fidelity",
        "compiled",
    }


def test_clean_removes_them_and_counts_the_bytes(tree, capsys):
    root, keep = tree
    summary = clean(root, keep, dry_run=False)
    assert summary == f"cleanup: 3 unreferenced artifacts, freed {3 * 4096 / 2**20:.1f} MiB ({root})"
    assert not (root / "mmdit/m/iOS18/latent16x16/blocks0-4.fp16.mlpackage").exists()
    for kept in ("checkpoints/tiny.safetensors", "logs/mmdit/m/iOS18/latent16x16/blocks0-4.log",
                 "coremlsd3_m_packages/Stage1.mlpackage/Data/weight.bin",
                 "mmdit/m/iOS18/latent16x16/blocks0-2.fp16.mlpackage/Data/weight.bin"):  # fmt: skip
        assert (root / kept).is_file()
    assert not [path for path in root.rglob(".*old-*")]
    assert "removed " in capsys.readouterr().out


def test_preview_removes_nothing(tree):
    root, keep = tree
    before = sorted(root.rglob("*"))
    assert "would free" in clean(root, keep, dry_run=True)
    assert sorted(root.rglob("*")) == before


def test_a_missing_root_is_one_line(tmp_path):
    with pytest.raises(PipelineError, match="no such output root"):
        clean(tmp_path / "nope", set(), dry_run=False)


def test_cleanup_removes_an_old_layouts_stage_and_keeps_the_folders(demo_workdir, tmp_path):
    """A block range of no configured layout goes; everything the targets use stays."""
    # A copy: cleanup under demo.yaml also removes what only another config's targets use
    # (the session's tiny SD3.5, config/demo-sd3.5.yaml), which later tests read.
    workdir = copy_of_build(demo_workdir, tmp_path / "copy")
    stages = workdir / "results/demo/mmdit/4step/iOS18/latent16x16"
    stale = stages / "blocks0-4.fp16.mlpackage"
    shutil.copytree(stages / "blocks0-1.fp16.mlpackage", stale)
    result = snakemake(workdir, "-c1", "cleanup")
    removed = [line for line in result.stdout.splitlines() if line.startswith("removed ")]
    # Other tests may have left artifacts of their own config variants; this one's must be listed.
    assert f"removed {stale.relative_to(workdir)} ({disk_mib(stages / 'blocks0-1.fp16.mlpackage')} MiB)" in removed
    demo_folders = ("coremlsd3_4step", "coremlsd3_2step", "4step/iOS18/latent16x16/blocks1-3")
    assert not [line for line in removed if any(name in line for name in demo_folders)]
    assert "removed results/demo/coremlsd3_sd35_packages" in "\n".join(removed)
    assert f"cleanup: {len(removed)} unreferenced artifacts, freed" in result.stdout
    assert not stale.exists()
    folders = [str(workdir / f"results/demo/coremlsd3_{model}_packages") for model in ("4step", "2step")]
    check = subprocess.run(
        [sys.executable, "-m", "sd3coreml", "verify-folder", *folders], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


def disk_mib(folder: Path) -> str:
    return f"{sum(p.stat().st_blocks * 512 for p in folder.rglob('*') if p.is_file()) / 2**20:.1f}"
