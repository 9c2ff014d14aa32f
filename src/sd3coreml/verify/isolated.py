"""Run a function in a child process, so that a crash, a signal or a hang becomes a record.

Core ML can SIGKILL its process at the first prediction of a model whose Neural Engine
compile failed (coremltools#2758), or hang; in the job's own process that kills the job and
takes the reason with it. `run_isolated` runs `module:function(**kwargs)` in a fresh
interpreter with a timeout, and returns either its value or what went wrong: the signal or
exit code, the seconds it ran, and the last lines the child wrote to stderr (where Core ML
and the Neural Engine compiler log). A caller that needs more of the stderr than its tail
(a Neural Engine failure at the first load, hundreds of lines before the end) passes
`on_stderr_line`, which sees every line, whatever the child's end.

Every child gets its own temporary root, `<temporary folder>/sd3coreml-coreml-<parent pid>-*`,
as its TMPDIR: its package copies and compiled models land there, and the parent removes the
root once the child has ended, killed or not (SIGKILL from a timeout or from the Neural Engine
runs no cleanup in the child). A root whose parent died too is removed by the next
`run_isolated` on the machine. Whether Core ML's own compile honours TMPDIR is unverified.

The child is `python -m sd3coreml.verify.isolated CALL RESULT`: both are pickle files.
"""

import collections
import importlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STDERR_LINES = 20
ROOT_PREFIX = "sd3coreml-coreml-"
# Written into a root once its child runs: a root whose parent died is left alone while its child lives.
CHILD_PID_FILE = "child.pid"


@dataclass(frozen=True)
class ChildResult:
    value: object = None
    failure: dict | None = None  # {"failure": "signal"|"timeout"|"exit", "seconds", "stderr", ...}
    stderr: list[str] = ()  # the child's last stderr lines, whether it succeeded or not
    pid: int | None = None
    started_at: float | None = None  # the child's start, seconds since the epoch (for the unified log)

    @property
    def ok(self) -> bool:
        return self.failure is None


def last_lines(text: str, count: int = STDERR_LINES) -> list[str]:
    return [line for line in text.splitlines() if line.strip()][-count:]


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def root_owner(name: str) -> int | None:
    """The parent pid in a child root's name (`sd3coreml-coreml-4242-x1y2` -> 4242), or None."""
    pid = name[len(ROOT_PREFIX) :].split("-", 1)[0] if name.startswith(ROOT_PREFIX) else ""
    return int(pid) if pid.isdigit() else None


def root_in_use(root: Path) -> bool:
    owner = root_owner(root.name)
    if owner is None or process_alive(owner):
        return True
    try:
        child = int((root / CHILD_PID_FILE).read_text())
    except (OSError, ValueError):
        return False
    return process_alive(child)


def remove_stale_roots(base: Path | None = None) -> list[Path]:
    """Remove the child roots in `base` (the temporary folder) whose parent and child are gone."""
    base = Path(base if base is not None else tempfile.gettempdir())
    stale = [root for root in sorted(base.glob(f"{ROOT_PREFIX}*")) if root.is_dir() and not root_in_use(root)]
    for root in stale:
        shutil.rmtree(root, ignore_errors=True)
    return stale


def read_stderr(path: Path, on_line: Callable[[str], None] | None) -> list[str]:
    """The last `STDERR_LINES` non-blank lines of a child's stderr, every line handed to `on_line`."""
    tail = collections.deque(maxlen=STDERR_LINES)
    if not path.is_file():
        return []
    with path.open("r", encoding="utf-8", errors="replace") as stream:
        for line in stream:
            line = line.rstrip("\n")
            if on_line is not None:
                on_line(line)
            if line.strip():
                tail.append(line)
    return list(tail)


def run_isolated(
    target: str, kwargs: dict, timeout_s: float, on_stderr_line: Callable[[str], None] | None = None
) -> ChildResult:
    """`target` ("package.module:function") called with `kwargs` in a child process."""
    remove_stale_roots()
    root = Path(tempfile.mkdtemp(prefix=f"{ROOT_PREFIX}{os.getpid()}-"))
    try:
        return run_in_root(root, target, kwargs, timeout_s, on_stderr_line)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_in_root(root: Path, target: str, kwargs: dict, timeout_s: float, on_stderr_line) -> ChildResult:
    call, result, stderr_path = root / "call.pickle", root / "result.pickle", root / "stderr.txt"
    call.write_bytes(pickle.dumps((target, kwargs)))
    (root / "tmp").mkdir()
    command = [sys.executable, "-m", "sd3coreml.verify.isolated", str(call), str(result)]
    environment = {**os.environ, "TMPDIR": str(root / "tmp")}
    started_at, started = time.time(), time.monotonic()
    # A file, not a pipe: nothing is held in memory while the child runs, and what a killed
    # child wrote is still there to read.
    with stderr_path.open("wb") as stderr:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=environment)
    (root / CHILD_PID_FILE).write_text(str(child.pid))
    try:
        child.wait(timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        timed_out = True
    seconds, lines = round(time.monotonic() - started, 3), read_stderr(stderr_path, on_stderr_line)
    ended = {"stderr": lines, "pid": child.pid, "started_at": started_at}
    if timed_out:
        return ChildResult(failure=failure("timeout", timeout_s, lines, timeout_s=timeout_s), **ended)
    if child.returncode < 0:
        name = signal.Signals(-child.returncode).name
        return ChildResult(failure=failure("signal", seconds, lines, signal=name), **ended)
    if child.returncode != 0 or not result.is_file():
        return ChildResult(failure=failure("exit", seconds, lines, exit_code=child.returncode), **ended)
    return ChildResult(value=pickle.loads(result.read_bytes()), **ended)


def failure(kind: str, seconds: float, stderr: list[str], **details) -> dict:
    return {"failure": kind, "seconds": seconds, **details, "stderr": stderr}


def describe(record: dict) -> str:
    """One line for a failure record, e.g. `signal SIGKILL after 2.1 s`."""
    what = {
        "signal": lambda: f"signal {record.get('signal')}",
        "timeout": lambda: f"no answer within {record.get('timeout_s')} s",
        "exit": lambda: f"exit code {record.get('exit_code')}",
    }[record["failure"]]()
    return f"{what} after {record['seconds']} s" if record["failure"] != "timeout" else what


def main(call_path: str, result_path: str) -> None:
    target, kwargs = pickle.loads(Path(call_path).read_bytes())
    module, function = target.split(":")
    value = getattr(importlib.import_module(module), function)(**kwargs)
    Path(result_path).write_bytes(pickle.dumps(value))


if __name__ == "__main__":
    main(*sys.argv[1:3])
