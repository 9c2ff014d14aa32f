"""A job's code fingerprint on the session build: it names every module a job loaded, survives a move
or a fresh clone of the checkout, and an edit replans exactly the jobs whose code holds it."""

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from harness import DEMO_FOLDERS, MODULE_RECORDS, REPO, copy_tree, planned_jobs, snakemake

from sd3coreml.pipeline.code_closure import CodeBase

CODE = CodeBase(REPO / "src")
# What the demo's two packages folders plan after an edit of the VAE's module: its conversion,
# then by time what depends on it.
VAE_JOBS = {
    "vae_decoder": 1,
    "verify_vae_decoder": 1,
    "fidelity_report": 2,
    "packages_folder": 2,
    "coremlsd3_4step_packages": 1,
    "coremlsd3_2step_packages": 1,
}
CHECKOUT = ("Snakefile", "rules", "src", "config", "profiles", "report", "envs", "Makefile", "pyproject.toml")


def test_every_module_a_demo_job_loaded_is_in_its_steps_closure(demo_build):
    """The session build's jobs recorded their sys.modules at exit (tests/job_hooks/sitecustomize.py)."""
    records = [json.loads(path.read_text()) for path in (demo_build / MODULE_RECORDS).glob("*.json")]
    for record in records:
        unseen = set(record["modules"]) - CODE.step_code(record["step"])
        assert not unseen, f"{record['step']} loaded {sorted(unseen)}, which its fingerprint leaves out"
    steps = {record["step"] for record in records}
    expected = {"synthetic-transformer", "synthetic-components", "convert-conditioning", "convert-input-stage",
                "convert-block-range", "convert-text-encoder", "convert-vae-decoder", "compress-package",
                "copy-tokenizer", "verify-package", "fidelity-report", "assemble-folder", "sweep-summary"}  # fmt: skip
    if not expected <= steps and os.environ.get("SD3COREML_DEMO_WORKDIR"):
        pytest.skip("the kept demo build was partly up to date: not every step ran to record its modules")
    assert expected <= steps


def copy_of_checkout(demo_build: Path, path: Path, record: bool = True) -> Path:
    """The checkout moved to `path` with the session build's results beside it, times kept."""
    path.mkdir(parents=True)
    for name in CHECKOUT:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, path / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, path / name)
    copy_tree(demo_build / "results", path / "results")
    if record:
        copy_tree(demo_build / ".snakemake" / "metadata", path / ".snakemake" / "metadata")
    return path


def planned(checkout: Path, *args: str) -> dict[str, int]:
    return planned_jobs(snakemake(checkout, "-n", *args, *DEMO_FOLDERS, snakefile=checkout / "Snakefile"))


@pytest.mark.parametrize("profile", ["default", "mac"])
def test_a_moved_checkout_with_its_record_plans_nothing(demo_build, tmp_path, profile):
    checkout = copy_of_checkout(demo_build, tmp_path / "moved")
    assert planned(checkout, "--workflow-profile", str(checkout / "profiles" / profile)) == {}


def test_a_fresh_clone_newer_than_the_results_plans_nothing(demo_build, tmp_path):
    checkout = copy_of_checkout(demo_build, tmp_path / "clone", record=False)
    later = time.time() + 3600
    for name in CHECKOUT:
        for path in [checkout / name, *(checkout / name).rglob("*")]:
            os.utime(path, (later, later))
    assert planned(checkout) == {}


def test_an_edit_replans_exactly_the_jobs_whose_code_holds_it(demo_build, tmp_path):
    checkout = copy_of_checkout(demo_build, tmp_path / "edited")
    vae = checkout / "src" / "sd3coreml" / "convert" / "vae.py"
    vae.write_text(vae.read_text() + "\n# an edit\n")
    assert planned(checkout) == VAE_JOBS
    errors = checkout / "src" / "sd3coreml" / "errors.py"
    errors.write_text(errors.read_text() + "\n# an edit\n")
    everything = planned(checkout)
    assert everything["synthetic_transformer"] == 2 and everything["mmdit_block_range"] == 6
    assert everything["compress_package"] == 10 and everything["palettize_per_tensor"] == 2
    assert everything["text_encoder"] == 2
