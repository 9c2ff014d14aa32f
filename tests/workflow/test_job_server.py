"""The warm job server (sd3coreml/job_server.py) and its client, `python -m sd3coreml`, on cheap steps.

Each job runs as Snakemake starts one: `python -m sd3coreml STEP` with the session's server named
in its environment, one thread, the temporary folder Snakemake gives. Whether the server ran it
is read from the server's log; a refused job runs in its client's own process.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from harness import JobServer

from sd3coreml.job_server import SNAKEMAKE_THREAD_VARIABLES

BAD_SPEC = '{"no measurements": 1}'
WAIT_S = 30


def job_environment(server: JobServer, **changes: str) -> dict:
    """A Snakemake job's environment, for a job of one thread, handed to `server`."""
    env = {**os.environ, **server.environment(), **{name: "1" for name in SNAKEMAKE_THREAD_VARIABLES}}
    env.update({name: tempfile.gettempdir() for name in ("TMPDIR", "TMP", "TEMPDIR", "TEMP")})
    return {**env, **changes}


def step(env: dict, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`python -m sd3coreml *args` in the temporary folder (no step here gets as far as writing)."""
    command = [sys.executable, "-m", "sd3coreml", *args]
    return subprocess.run(
        command, input=stdin, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(), check=False,
        timeout=WAIT_S,
    )  # fmt: skip


def served_during(server: JobServer, run) -> tuple[object, list[str]]:
    """What `run()` returned, and the steps the server ran meanwhile."""
    before = set(server.served())
    result = run()
    return result, [name for pid, name in server.served().items() if pid not in before]


def wait_until(found, what: str):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if result := found():
            return result
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {WAIT_S} s")


def wait_for_new_job(server: JobServer, before: set[int]) -> int:
    return wait_until(lambda: (set(server.served()) - before or {None}).pop(), "job served")


def gone(pid: int) -> bool:
    """The process ended (a zombie the server has yet to reap counts as ended)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_a_served_step_uses_the_clients_stdin_stdout_stderr_and_exit_code(job_server):
    env = job_environment(job_server)
    (shown, failed, crashed, misused), steps = served_during(job_server, lambda: [
        step(env, "verify-folder", "--help"),
        step(env, "verify-folder", "/nonexistent-folder"),
        step(env, "fidelity-report", "--spec", "-", "--out-json", "x.json", "--out-md", "x.md", stdin=BAD_SPEC),
        step(env, "no-such-step"),
    ])  # fmt: skip
    assert steps == ["verify-folder", "verify-folder", "fidelity-report", "no-such-step"]
    assert shown.returncode == 0 and shown.stdout.startswith("usage: python -m sd3coreml verify-folder")
    assert failed.returncode == 1 and failed.stderr.startswith("error: /nonexistent-folder: no such folder")
    # The spec came through stdin; an uncaught exception prints its traceback and exits 1, as Python does.
    assert crashed.returncode == 1 and "Traceback" in crashed.stderr
    assert crashed.stderr.rstrip().endswith("KeyError: 'measurements'")
    assert misused.returncode == 2 and "invalid choice: 'no-such-step'" in misused.stderr


def opened_for_writing(fifo: Path) -> int | None:
    """A writer's descriptor of `fifo` once a reader has it open (or waits in its open), else None."""
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ENXIO:
            return None
        raise


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_client_ends_the_job_and_the_client_alike(job_server, signum, tmp_path):
    """Snakemake cancels a job by signalling its shell's process group, which holds the client, not the child."""
    spec = tmp_path / "spec"
    os.mkfifo(spec)
    command = [sys.executable, "-m", "sd3coreml", "fidelity-report", "--spec", str(spec), "--out-json", "x"]
    before = set(job_server.served())
    env = job_environment(job_server)
    client = subprocess.Popen(
        [*command, "--out-md", "y"], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=tmp_path
    )
    job = wait_for_new_job(job_server, before)
    # Signalled once the step opens its spec (the FIFO, whose writer holds it empty): earlier, the
    # signal can land in one of the step's imports, where a library's bare `except` may swallow
    # the KeyboardInterrupt (seen once under load: the job read on and exited 1).
    writer = wait_until(lambda: opened_for_writing(spec), "the job opening its spec")
    try:
        wait_until(lambda: psutil.Process(job).num_threads() == 2, "the job watching its client")
        client.send_signal(signum)
        _, stderr = client.communicate(timeout=WAIT_S)
    finally:
        os.close(writer)
    assert client.returncode == -signum
    assert gone(job)
    if signum == signal.SIGINT:  # the step's KeyboardInterrupt, printed as Python prints it
        assert b"KeyboardInterrupt" in stderr


def test_a_killed_client_takes_its_job_along(job_server):
    command = [sys.executable, "-m", "sd3coreml", "fidelity-report", "--spec", "-", "--out-json", "x", "--out-md", "y"]
    before = set(job_server.served())
    client = subprocess.Popen(
        command, stdin=subprocess.PIPE, env=job_environment(job_server), cwd=tempfile.gettempdir()
    )
    job = wait_for_new_job(job_server, before)
    client.kill()
    client.wait()
    assert gone(job), "the job outlived its SIGKILLed client"


@pytest.mark.parametrize(
    "changes",
    [
        {"PYTHONHASHSEED": "4242"},
        {"OMP_NUM_THREADS": "2"},
        {"PYTHONPATH": ""},
        {"SD3COREML_TEST_CLOCK_SHIFT_DAYS": "1"},
    ],
)
def test_an_environment_the_server_cannot_serve_runs_on_its_own(job_server, changes):
    env = job_environment(job_server, **changes)
    shown, steps = served_during(job_server, lambda: step(env, "verify-folder", "--help"))
    assert shown.returncode == 0 and "verify-folder" in shown.stdout
    assert steps == []
    assert f"refused ['verify-folder']: environment differs: {next(iter(changes))}" in job_server.log.read_text()


def test_what_imports_set_in_the_environment_may_be_in_a_jobs_too(job_server):
    """A pytest process that imported torch._dynamo and coremltools before starting a job has their variables:
    TORCHINDUCTOR_CACHE_DIR (the server's preloads set the same), KMP_* (read by no library loaded before the fork)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    imported = {"TORCHINDUCTOR_CACHE_DIR": os.path.abspath(default_cache_dir()), "KMP_DUPLICATE_LIB_OK": "True"}
    env = job_environment(job_server, **imported, KMP_INIT_AT_FORK="FALSE")
    shown, steps = served_during(job_server, lambda: step(env, "verify-folder", "--help"))
    assert shown.returncode == 0 and steps == ["verify-folder"]


def test_without_a_server_the_client_runs_the_step_itself(job_server, tmp_path):
    shown = step(job_environment(job_server, SD3COREML_JOB_SERVER=str(tmp_path / "none")), "verify-folder", "--help")
    assert shown.returncode == 0 and "verify-folder" in shown.stdout


def test_a_served_job_records_the_modules_of_a_job_of_its_own(job_server, tmp_path):
    """The module record (tests/job_hooks) of a served job: this project's modules, imported fresh in the child."""
    records = {"served": tmp_path / "served", "own": tmp_path / "own"}
    env = job_environment(job_server, SD3COREML_TEST_RECORD_MODULES=str(records["served"]))
    _, steps = served_during(job_server, lambda: step(env, "verify-folder", "--help"))
    assert steps == ["verify-folder"]
    own = {**env, "SD3COREML_TEST_RECORD_MODULES": str(records["own"]), "SD3COREML_JOB_SERVER": ""}
    step(own, "verify-folder", "--help")
    served, own = ([json.loads(path.read_text()) for path in folder.iterdir()] for folder in records.values())
    assert len(served) == 1 and served == own
    assert "sd3coreml.job_server" not in served[0]["modules"]


def test_a_framework_imported_before_a_probe_looks_absent_to_it():
    """A served job's torch was imported by the server; coremltools must not see it where the step hides it."""
    check = (
        "import sys, torch\n"
        "from sd3coreml.frameworks import skip_unused_frameworks\n"
        "skip_unused_frameworks('torch', 'sklearn', 'transformers')\n"
        "from coremltools import _deps\n"
        "assert not _deps._HAS_TORCH, 'coremltools saw torch'\n"
        "assert sys.modules['torch'] is torch and 'torch.nn' in sys.modules, 'torch was not put back'\n"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
