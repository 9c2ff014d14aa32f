"""The Mac hand-off (config/handoff.yaml): only compile and folder jobs, on a machine of its own."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from harness import FAKE_COMPILER_TEMPLATE, JOB_HOOKS, STAGE, copy_tree, new_workdir, planned_jobs, snakemake

from sd3coreml import checksums
from sd3coreml.release import folder_check

FOLDER = "coremlsd3_4step_packages"


@pytest.fixture
def mac(demo_build, tmp_path):
    """A fresh checkout's working directory holding only a packages folder copied from the build."""
    workdir = new_workdir(tmp_path / "mac")
    copy_tree(demo_build / "results" / "demo" / FOLDER, workdir / "results" / FOLDER)
    config = yaml.safe_load((workdir / "config" / "handoff.yaml").read_text())
    config["handoff"]["folders"] = {"4step": f"results/{FOLDER}"}
    config["compiler"]["command"] = FAKE_COMPILER_TEMPLATE
    (workdir / "config" / "mac.yaml").write_text(yaml.safe_dump(config))
    return workdir


def hand_off(workdir: Path, *args: str, check: bool = True):
    return snakemake(workdir, *args, "coremlsd3_4step", config="config/mac.yaml", check=check,
                     env={"PYTHONPATH": str(JOB_HOOKS), "SD3COREML_TEST_TOOLCHAIN_DRIFT": "1"})  # fmt: skip


def test_the_handoff_compiles_and_assembles_only_with_another_toolchain_and_no_checkpoints(mac):
    assert planned_jobs(hand_off(mac, "-n")) == {"handoff_compile": 8, "handoff_app_folder": 1, "coremlsd3_4step": 1}
    hand_off(mac, "-c2")
    app = mac / "results" / "coremlsd3_4step"
    assert folder_check.folder_problems(app) == []
    assert sorted(path.name for path in app.glob("*.mlmodelc")) == sorted(
        path.name.replace(".mlpackage", ".mlmodelc") for path in (mac / "results" / FOLDER).glob("*.mlpackage")
    )
    manifest = json.loads((app / "manifest.json").read_text())
    assert manifest["packages"] == json.loads((mac / "results" / FOLDER / "manifest.json").read_text())
    assert manifest["compiler"]["deployment_target"] == "18.2" and manifest["app_loadable"] is False
    assert sorted(path.name for path in (mac / "results").iterdir()) == sorted(
        ["coremlsd3_4step", FOLDER, "compiled", "logs", "reports"]
    )


def test_the_handoff_refuses_a_stale_stage_before_any_job(mac):
    packages = mac / "results" / FOLDER
    shutil.copytree(packages / f"{STAGE}3.mlpackage", packages / f"{STAGE}4.mlpackage")
    checksums.write_sha256sums(packages)
    result = hand_off(mac, "-c2", check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1
    assert f"stale: {STAGE}4.mlpackage (the layout in manifest.json is Stage0..Stage3)" in errors[0]
    assert not (mac / "results" / "coremlsd3_4step").exists() and not (mac / "results" / "compiled").exists()
