"""Bit-identical rebuilds, interrupted or not.

The 4-step packages folder is rebuilt in another directory, a year later (libfaketime on
Linux, a Python clock shift from tests/job_hooks on macOS), with another PYTHONHASHSEED and
OMP_NUM_THREADS, and SIGKILLed at three points on the way: a job mid-write (tests/job_hooks
stops it just before it moves its output into place), Snakemake itself while jobs run, and
Snakemake together with the folder job. The documented rerun (`--unlock` where Snakemake was killed, then the same
command; profiles/default sets rerun-incomplete) must end with the SHA256SUMS of the
session's uninterrupted demo build.

To fit `make test`'s time, the rebuild starts from a copy of the session's build without
what it rebuilds: the 4-step model's last stage (fp16 and int8), its fidelity check, the
report and the folder. That one range still passes all three kill points: its conversion
is the job killed mid-write, its compression runs when Snakemake is killed, then the folder
job. The text encoders' palettization is repeated under the same other conditions by a
separate test. `pytest -m slow` rebuilds both folders from nothing with -c1 instead.
"""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from harness import DEMO_FOLDERS, JOB_HOOKS, REPO, copy_of_build, new_workdir

from sd3coreml import checksums
from sd3coreml.atomic import remove_path
from sd3coreml.release import folder_check

ROOT = "results/demo"
REBUILT = "coremlsd3_4step_packages"
# Under ROOT: what the fast rebuild makes again (globs): the last stage of the demo's [1, 2, 2].
REBUILT_ARTIFACTS = (
    "mmdit/4step/*/*/blocks3-5_head.*",
    "fidelity/mmdit/4step/*/*/blocks3-5_head.*",
    f"reports/{REBUILT}",
    REBUILT,
)
TEMPORARY = re.compile(r"\..+\.tmp-(\d+)(\.mlpackage)?")
POLL_SECONDS = 0.02
SHIFT_DAYS = 400
PHASE_TIMEOUT_SECONDS = 300


def faketime_library() -> str:
    package = Path(importlib.util.find_spec("libfaketime").origin).parent
    return str(package / "vendor" / "libfaketime" / "src" / "libfaketime.so.1")


def other_conditions() -> dict:
    """Another day (400 days on), hash seed and thread count than the session's build."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("SOURCE_DATE_EPOCH", None)
    env.update(PYTHONHASHSEED="4242", OMP_NUM_THREADS="1")
    if sys.platform == "darwin":
        # macOS strips DYLD_* from processes started through /bin/bash, and the wheel's library is Linux's.
        return {**env, "PYTHONPATH": str(JOB_HOOKS), "SD3COREML_TEST_CLOCK_SHIFT_DAYS": str(SHIFT_DAYS)}
    return {
        **env,
        "LD_PRELOAD": faketime_library(),
        "FAKETIME": f"+{SHIFT_DAYS}d",
        # A faked monotonic clock hangs Python's timed waits (Snakemake's scheduler uses them).
        "DONT_FAKE_MONOTONIC": "1",
    }


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    return [*command, *args, "--configfile", str(workdir / "config/demo.yaml")]


def run(workdir: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(snakemake_command(workdir, *args), capture_output=True, check=False, text=True, env=env)


def start(workdir: Path, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        snakemake_command(workdir, *args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def job_processes(workdir: Path, step: str | None = None) -> list[int]:
    """PIDs of `python -m sd3coreml <step>` jobs (any step by default) running in `workdir`."""
    found = []
    for process in psutil.process_iter():
        try:
            words = process.cmdline()
            wanted = "sd3coreml" in words and (step is None or step in words)
            if wanted and Path(process.cwd()) == workdir:
                found.append(process.pid)
        except (psutil.Error, OSError):
            continue
    return found


def stopped_jobs(workdir: Path) -> list[int]:
    """Jobs that stopped themselves before moving an output into place (tests/job_hooks)."""
    return [pid for pid in job_processes(workdir) if process_state(pid) == psutil.STATUS_STOPPED]


def process_state(pid: int) -> str:
    try:
        return psutil.Process(pid).status()
    except psutil.Error:
        return ""


def temporaries_of(pid: int, root: Path) -> list[Path]:
    return [path for path in root.rglob(f".*.tmp-{pid}*") if TEMPORARY.fullmatch(path.name)]


def wait_for(found, snakemake: subprocess.Popen, what: str):
    deadline = time.monotonic() + PHASE_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        result = found()
        if result:
            return result
        if snakemake.poll() is not None:
            raise AssertionError(f"the build ended (exit {snakemake.returncode}) before {what}")
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"no {what} within {PHASE_TIMEOUT_SECONDS} s")


def wait_until_gone(workdir: Path) -> None:
    """Jobs orphaned by a killed Snakemake run on; the rerun starts once they are done."""
    deadline = time.monotonic() + PHASE_TIMEOUT_SECONDS
    while job_processes(workdir) and time.monotonic() < deadline:
        time.sleep(0.1)


def refused_while_locked(workdir: Path, env: dict) -> str:
    refused = run(workdir, env, "-c2", REBUILT)
    assert refused.returncode != 0
    return refused.stderr


def unlock(workdir: Path, env: dict) -> None:
    unlocked = run(workdir, env, "--unlock")
    assert unlocked.returncode == 0, unlocked.stderr[-2000:]


@pytest.fixture(scope="module")
def interrupted_rebuild(demo_build, tmp_path_factory):
    workdir = copy_of_build(demo_build, tmp_path_factory.mktemp("elsewhere").resolve())
    for pattern in REBUILT_ARTIFACTS:
        for path in (workdir / ROOT).glob(pattern):
            remove_path(path)
    env, events = other_conditions(), {}

    # 1. A job's own process, mid-write: its output is complete under the temporary name.
    stopping = {**env, "PYTHONPATH": str(JOB_HOOKS), "SD3COREML_TEST_STOP_BEFORE_MOVE": "1"}
    build = start(workdir, stopping, "-c2", REBUILT)
    writer = wait_for(lambda: stopped_jobs(workdir), build, "a job about to move its output into place")[0]
    events["killed mid-write"] = temporaries_of(writer, workdir / ROOT)
    os.kill(writer, signal.SIGKILL)
    while build.poll() is None:  # the other running job stops at its own move: let it finish
        for pid in stopped_jobs(workdir):
            os.kill(pid, signal.SIGCONT)
        time.sleep(POLL_SECONDS)
    events["job killed"] = build.returncode

    # 2. Snakemake itself, while a compression job runs; the orphaned job finishes alone.
    build = start(workdir, env, "-c2", REBUILT)
    wait_for(lambda: job_processes(workdir, "compress-package"), build, "a compression job")
    build.kill()
    build.wait()
    wait_until_gone(workdir)
    events["locked after snakemake was killed"] = refused_while_locked(workdir, env)
    unlock(workdir, env)

    # 3. Snakemake and the folder job together, like a power cut while the folder is assembled.
    build = start(workdir, env, "-c2", REBUILT)
    assembler = wait_for(lambda: job_processes(workdir, "assemble-folder"), build, "the folder job")[0]
    os.kill(assembler, signal.SIGSTOP)
    build.kill()
    os.kill(assembler, signal.SIGKILL)
    build.wait()
    unlock(workdir, env)

    events["rerun"] = run(workdir, env, "-c2", REBUILT)
    return workdir, events


def test_an_interrupted_rebuild_elsewhere_a_year_later_is_bit_identical(demo_build, interrupted_rebuild):
    workdir, events = interrupted_rebuild
    assert events["killed mid-write"], "the killed job had no output under a temporary name"
    assert events["job killed"] != 0
    assert "--unlock" in events["locked after snakemake was killed"]
    assert events["rerun"].returncode == 0, events["rerun"].stderr[-3000:]
    rebuilt, original = workdir / ROOT / REBUILT, demo_build / ROOT / REBUILT
    assert (rebuilt / "SHA256SUMS").read_bytes() == (original / "SHA256SUMS").read_bytes()
    assert folder_check.folder_problems(rebuilt) == []
    # The host-and-time record lies outside the folder, and it did see the other year.
    record = (workdir / ROOT / "reports" / REBUILT / "build_host.json").read_text()
    assert str(time.gmtime(time.time() + SHIFT_DAYS * 86400).tm_year) in record


def test_killed_writers_leave_nothing_that_looks_finished(interrupted_rebuild):
    workdir, _ = interrupted_rebuild
    # Every leftover of a killed writer was cleaned by the next write of the same artifact.
    leftovers = [path for path in (workdir / ROOT).rglob("*") if TEMPORARY.fullmatch(path.name)]
    assert leftovers == []


def test_palettes_are_bit_identical_elsewhere_a_year_later(demo_build, tmp_path):
    packages = demo_build / ROOT / "text_encoders" / "iOS18"
    out = tmp_path / "TextEncoder2.palettize6_per_tensor.mlpackage"
    command = [sys.executable, "-m", "sd3coreml", "compress-package", "--compression", "palettize6_per_tensor"]
    command += ["--package", str(packages / "TextEncoder2.fp16.mlpackage")]
    result = subprocess.run(
        [*command, "--out", str(out)], capture_output=True, check=False, text=True, env=other_conditions()
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert checksums.tree_sha256(out) == checksums.tree_sha256(packages / out.name)


def test_manifest_holds_no_host_paths_or_names(demo_build):
    manifest = (demo_build / ROOT / REBUILT / "manifest.json").read_text()
    assert str(demo_build) not in manifest and str(REPO) not in manifest
    assert os.uname().nodename not in manifest
    assert not re.search(r'"/', manifest), "an absolute path reached manifest.json"


def test_manifest_records_what_shaped_each_entry(demo_build):
    manifest = json.loads((demo_build / ROOT / REBUILT / "manifest.json").read_text())
    entries = {path.split("/")[0] for path in manifest["files"]}
    assert {name.removesuffix(".mlpackage") for name in entries} == set(manifest["artifacts"])
    ranges = manifest["config"]["stage_block_ranges"]
    for index, block_range in enumerate(ranges, 1):
        settings = manifest["artifacts"][f"MultiModalDiffusionTransformerStage{index}"]
        assert settings["blocks"] == block_range and settings["head"] == (index == len(ranges))
    assert set(manifest["inputs"]) == {"transformer_weights", "transformer_config", "components"}
    assert {
        "python",
        "torch",
        "coremltools",
        "numpy",
        "diffusers",
        "transformers",
        "snakemake",
        "open_clip_torch",
    } <= set(manifest["toolchain"])


@pytest.mark.slow
def test_clean_rebuilds_with_one_core_are_bit_identical(demo_build, tmp_path_factory):
    workdir = new_workdir(tmp_path_factory.mktemp("one-core")).resolve()
    result = run(workdir, other_conditions(), "-c1", *DEMO_FOLDERS)
    assert result.returncode == 0, result.stderr[-3000:]
    for target in DEMO_FOLDERS:
        rebuilt, original = workdir / ROOT / target, demo_build / ROOT / target
        assert (rebuilt / "SHA256SUMS").read_bytes() == (original / "SHA256SUMS").read_bytes()
        assert checksums.tree_sha256(rebuilt) == checksums.tree_sha256(original)
