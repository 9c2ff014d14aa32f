"""`snakemake cleanup` on a copy of the session build: an old layout's stage goes, the folders stay whole."""

import shutil
import subprocess
import sys
from pathlib import Path

from harness import copy_of_build, snakemake


def test_cleanup_removes_an_old_layouts_stage_and_keeps_the_folders(demo_build, tmp_path):
    """A block range of no configured layout goes; everything the targets use stays."""
    # A copy: cleanup under demo.yaml also removes what only another config's targets use
    # (the session's tiny SD3.5, config/demo-sd3.5.yaml), which later tests read.
    workdir = copy_of_build(demo_build, tmp_path / "copy")
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
