"""What a Mac replans over Linux-built results, counted here: SD3COREML_PLAN_AS=macos plans as a Mac
(dry runs only), and SD3COREML_TEST_MAC_TOOLCHAIN makes this host's toolchain read as a Mac's (the same
releases, no `+cpu` label, another Python patch level).

A Mac adds Core ML's own measurements, each its own artifact, and what reads them (Core ML's
fidelity report and end-to-end check, the sweep summary, `verify`); it reruns no conversion, no
executor measurement, no executor report or end-to-end check, and no folder.
"""

import json
import os
import re
import shutil

import yaml
from harness import DEMO_TARGETS, JOB_HOOKS, copy_of_build, new_workdir, only_error_line, planned_jobs, snakemake

PLAN_AS_MAC = {"SD3COREML_PLAN_AS": "macos"}
HOOKS = {"PYTHONPATH": os.pathsep.join(filter(None, [str(JOB_HOOKS), os.environ.get("PYTHONPATH")]))}
MAC_TOOLCHAIN = {**HOOKS, "SD3COREML_TEST_MAC_TOOLCHAIN": "1"}
# Core ML's fidelity of the demo's two packages folders (each package with its compressed twin), by
# rule: the two models share their text encoders and VAE.
COREML_FIDELITY = {
    "fidelity_coreml_conditioning": 2,
    "fidelity_coreml_input_stage": 2,
    "fidelity_coreml_block_range": 6,
    "fidelity_coreml_text_encoder": 2,
    "fidelity_coreml_vae_decoder": 1,
    "fidelity_report_coreml": 2,
}


def added(mac: dict, linux: dict) -> dict:
    """What planning as a Mac adds to what this host plans; it may take nothing away."""
    assert all(mac.get(rule, 0) == count for rule, count in linux.items()), (mac, linux)
    return {rule: count for rule, count in mac.items() if rule not in linux}


def test_planning_as_a_mac_adds_only_core_ml_s_checks_to_a_build_from_nothing(tmp_path):
    workdir = new_workdir(tmp_path)
    for target, coreml in (("coremlsd3_4step_packages", {}), ("verify", {**COREML_FIDELITY, "end_to_end_coreml": 2})):
        linux = planned_jobs(snakemake(workdir, "-n", target))
        assert added(planned_jobs(snakemake(workdir, "-n", target, env=PLAN_AS_MAC)), linux) == coreml
    assert not (workdir / "results").exists()


def test_planning_as_a_mac_is_refused_for_a_real_run_before_any_job(tmp_path):
    workdir = new_workdir(tmp_path)
    result = snakemake(workdir, "-c1", "coremlsd3_4step_packages", env=PLAN_AS_MAC, check=False)
    assert only_error_line(result) == (
        "error: SD3COREML_PLAN_AS=macos only plans (snakemake -n); unset it to run jobs on this host"
    )
    assert not re.search(r"^(local)?rule \w+:", result.stdout + result.stderr, re.MULTILINE)
    assert not (workdir / "results").exists()
    result = snakemake(workdir, "-n", "coremlsd3_4step_packages", env={"SD3COREML_PLAN_AS": "windows"}, check=False)
    assert "the one host to plan as is macos" in only_error_line(result)


def test_a_mac_over_the_built_demo_replans_only_core_ml_s_checks(demo_build, tmp_path):
    """The finding: the runner param (executor+coreml on macOS) reran every fidelity job, report,
    end-to-end check and folder, and `torch 2.13.0+cpu` against a Mac's `torch 2.13.0` (and another
    Python patch level) reconverted everything."""
    workdir = copy_of_build(demo_build, tmp_path / "work")
    mac = {**PLAN_AS_MAC, **MAC_TOOLCHAIN}
    assert planned_jobs(snakemake(workdir, "-n", *DEMO_TARGETS, env=MAC_TOOLCHAIN)) == {}
    assert planned_jobs(snakemake(workdir, "-n", *DEMO_TARGETS[:2], env=mac)) == {}
    assert planned_jobs(snakemake(workdir, "-n", "fidelity", env=mac)) == {**COREML_FIDELITY, "fidelity": 1}
    assert set(planned_jobs(snakemake(workdir, "-n", "sweep", env=mac))) == {"profile_on_device", "sweep_summary", "sweep"}
    # `verify`: what this host would run anyway (the executor's end-to-end checks, if this build has
    # not run them yet), and Core ML's checks.
    linux = planned_jobs(snakemake(workdir, "-n", "verify", env=MAC_TOOLCHAIN))
    assert set(linux) <= {"end_to_end", "verify"}
    coreml = {**COREML_FIDELITY, "end_to_end_coreml": 2}
    assert added(planned_jobs(snakemake(workdir, "-n", "verify", env=mac)), {**linux, "verify": 1}) == coreml

    # With fidelity.enforce_coreml a folder needs Core ML's report passed. Turning it on changes the
    # executor's report's policy anywhere (it judges again, the folders after it, with the same
    # toolchain record, so the same bytes); a Mac adds Core ML's measurements and report.
    demo = yaml.safe_load((workdir / "config" / "demo.yaml").read_text())
    demo["fidelity"] = {**demo.get("fidelity", {}), "enforce_coreml": True}
    (workdir / "config" / "enforced.yaml").write_text(yaml.safe_dump(demo))
    enforced = planned_jobs(snakemake(workdir, "-n", *DEMO_TARGETS[:2], config="config/enforced.yaml", env=mac))
    folders = {"fidelity_report": 2, "packages_folder": 2, **dict.fromkeys(DEMO_TARGETS[:2], 1)}
    assert enforced == {**COREML_FIDELITY, **folders}


def test_another_release_on_the_mac_still_reconverts(demo_build, tmp_path):
    workdir = copy_of_build(demo_build, tmp_path / "work")
    drifted = {**HOOKS, "SD3COREML_TEST_TOOLCHAIN_DRIFT": "1", **PLAN_AS_MAC}
    planned = planned_jobs(snakemake(workdir, "-n", "coremlsd3_4step_packages", env=drifted))
    assert planned["mmdit_block_range"] == 3 and planned["text_encoder"] == 2 and planned["toolchain_record"] == 1


def test_a_folder_assembled_with_a_mac_s_toolchain_records_the_one_that_built_its_packages(demo_build, tmp_path):
    """The manifest keeps exact versions: those of the toolchain record the converting run wrote, so the
    folder's bytes do not follow the assembling host's wheels or patch level."""
    workdir = copy_of_build(demo_build, tmp_path / "work")
    folder = workdir / "results" / "demo" / DEMO_TARGETS[0]
    sums, manifest = (folder / "SHA256SUMS").read_bytes(), json.loads((folder / "manifest.json").read_text())
    shutil.rmtree(folder)
    result = snakemake(workdir, "-c1", DEMO_TARGETS[0], env=MAC_TOOLCHAIN)
    assert planned_jobs(result) == {"packages_folder": 1, DEMO_TARGETS[0]: 1}
    assert (folder / "SHA256SUMS").read_bytes() == sums
    assert json.loads((folder / "manifest.json").read_text())["toolchain"] == manifest["toolchain"]

