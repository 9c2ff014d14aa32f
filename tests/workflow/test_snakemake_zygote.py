"""The test harness's warm Snakemakes (tests/harness.py's SnakemakeZygotes): a dry run handed to
one prints and exits as `python -m snakemake` does, with the run's own environment; a run that
builds, or whose interpreter would start otherwise, runs as its own process."""

import subprocess

import harness
import pytest
from harness import new_workdir, only_error_line, planned_jobs, snakemake


@pytest.fixture
def zygotes():
    """Fresh zygotes for the test, the session's put back after it."""
    session, harness.SESSION_ZYGOTES = harness.SESSION_ZYGOTES, harness.SnakemakeZygotes()
    try:
        yield harness.SESSION_ZYGOTES
    finally:
        harness.SESSION_ZYGOTES.stop()
        harness.SESSION_ZYGOTES = session


def own_process(workdir, *args, **kwargs) -> subprocess.CompletedProcess:
    session, harness.SESSION_ZYGOTES = harness.SESSION_ZYGOTES, None
    try:
        return snakemake(workdir, *args, **kwargs)
    finally:
        harness.SESSION_ZYGOTES = session


def test_a_dry_run_in_a_zygote_plans_and_fails_as_in_its_own_process(zygotes, tmp_path):
    workdir = new_workdir(tmp_path)
    alone = own_process(workdir, "-n", "coremlsd3_4step_packages")
    runs = [snakemake(workdir, "-n", "coremlsd3_4step_packages") for _ in range(2)]
    assert len(zygotes.zygotes) == 1  # the second run went to a zygote
    assert [planned_jobs(run) for run in runs] == [planned_jobs(alone)] * 2 and planned_jobs(alone)
    # The run's own variables reach the child: this one is read by the Snakefile.
    refused = snakemake(workdir, "-n", "coremlsd3_4step_packages", env={"SD3COREML_PLAN_AS": "windows"}, check=False)
    assert refused.returncode == 1 and "the one host to plan as is macos" in only_error_line(refused)
    # An interpreter that would start otherwise (a test hook read at start), met once, and a run
    # that builds: their own processes.
    (served,) = zygotes.zygotes.values()
    drifted = {**served.env, "SD3COREML_TEST_TOOLCHAIN_DRIFT": "1"}
    assert zygotes.run(["python", "-m", "snakemake", "-n"], drifted) is None
    assert zygotes.run(["python", "-m", "snakemake", "-c1"], dict(served.env)) is None
    assert len(zygotes.zygotes) == 1
    assert not (workdir / "results").exists()
