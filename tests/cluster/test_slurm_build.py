"""`make test-slurm`: the demo's packages folders built through profiles/slurm on a one-node
cluster this test starts and stops (one_node_slurm.py), byte for byte the local build's.

Linux, as root, with Debian's slurmctld, slurmd, slurmdbd, slurm-client, munge and
mariadb-server installed (the Makefile installs them). Marked `slurm`: `make test` skips it.
"""

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from harness import DEMO_FOLDERS, REPO, new_workdir, sha256_check_command, snakemake
from one_node_slurm import ACCOUNT, PARTITION, one_node_slurm

pytestmark = pytest.mark.slurm
PROFILE = REPO / "profiles" / "slurm"


@pytest.fixture(scope="module")
def cluster():
    if os.uname().sysname != "Linux" or os.geteuid() != 0:
        pytest.fail("test-slurm starts Slurm's daemons: it needs Linux and root")
    # A short path: munge's and MariaDB's sockets live under it (108 bytes at most).
    root = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
    try:
        with one_node_slurm(root) as env:
            yield env
    finally:
        shutil.rmtree(root, ignore_errors=True)


def timed_build(workdir: Path, *args: str, env=None):
    start = time.monotonic()
    result = snakemake(workdir, *args, *DEMO_FOLDERS, env=env)
    return result, time.monotonic() - start


def steps_done(result) -> int:
    return int(re.findall(r"(\d+) of \d+ steps \(100%\) done", result.stderr + result.stdout)[-1])


@pytest.fixture(scope="module")
def local_build(tmp_path_factory):
    workdir = new_workdir(tmp_path_factory.mktemp("local"))
    result, seconds = timed_build(workdir, "-c2")
    print(f"local build: {steps_done(result)} jobs in {seconds:.0f} s")
    return workdir


def test_the_demo_builds_through_slurm_as_it_builds_locally(local_build, cluster, tmp_path):
    workdir = new_workdir(tmp_path / "slurm")
    # The plugin reads $USER (KeyError where CI leaves it unset); Slurm knows the user by uid anyway.
    env = {**cluster, "USER": os.environ.get("USER") or pwd.getpwuid(os.getuid()).pw_name}
    # A real cluster names its partition and account; a command line's --default-resources
    # replaces the profile's list, so the profile's own entries are passed on too (and the
    # option after the list ends it: it would take the targets as resources).
    resources = [*yaml.safe_load((PROFILE / "config.yaml").read_text())["default-resources"],
                 f"slurm_partition={PARTITION}", f"slurm_account={ACCOUNT}"]  # fmt: skip
    options = ["--default-resources", *resources, "--workflow-profile", str(PROFILE)]
    result, seconds = timed_build(workdir, *options, env=env)
    jobs = steps_done(result)
    print(f"slurm build: {jobs} jobs in {seconds:.0f} s")

    for folder in DEMO_FOLDERS:
        sums = workdir / "results" / "demo" / folder / "SHA256SUMS"
        assert sums.read_bytes() == (local_build / "results" / "demo" / folder / "SHA256SUMS").read_bytes()
        subprocess.run([*sha256_check_command(), "--quiet", "SHA256SUMS"], cwd=sums.parent, check=True)
    # Each job ran as its own Slurm job, under the account asked for, and accounting saw it end.
    accounted = subprocess.run(["sacct", "-X", "-n", "--parsable2", "-o", "JobName,Account,State"],
                               env=env, capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    states = {line.split("|", 1)[1] for line in accounted}
    assert len(accounted) >= jobs - len(local_rules(result)) and states == {f"{ACCOUNT}|COMPLETED"}, accounted


def local_rules(result) -> list[str]:
    """The jobs Snakemake ran on the submitting host (`localrule`), not through sbatch."""
    return re.findall(r"^localrule (\w+):", result.stderr + result.stdout, re.MULTILINE)
