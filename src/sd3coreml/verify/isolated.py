"""Run a function in a child process, so that a crash, a signal or a hang becomes a record.

Core ML can SIGKILL its process at the first prediction of a model whose Neural Engine
compile failed (coremltools#2758), or hang; in the job's own process that kills the job and
takes the reason with it. `run_isolated` runs `module:function(**kwargs)` in a fresh
interpreter with a timeout, and returns either its value or what went wrong: the signal or
exit code, the seconds it ran, and the last lines the child wrote to stderr (where Core ML
and the Neural Engine compiler log).

The child is `python -m sd3coreml.verify.isolated CALL RESULT`: both are pickle files.
"""

import importlib
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

STDERR_LINES = 20


@dataclass(frozen=True)
class ChildResult:
    value: object = None
    failure: dict | None = None  # {"failure": "signal"|"timeout"|"exit", "seconds", "stderr", ...}
    stderr: list[str] = ()  # the child's last stderr lines, whether it succeeded or not
    pid: int | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


def last_lines(text: str, count: int = STDERR_LINES) -> list[str]:
    return [line for line in text.splitlines() if line.strip()][-count:]


def run_isolated(target: str, kwargs: dict, timeout_s: float) -> ChildResult:
    """`target` ("package.module:function") called with `kwargs` in a child process."""
    with tempfile.TemporaryDirectory(prefix="sd3coreml-child-") as scratch:
        call, result = Path(scratch) / "call.pickle", Path(scratch) / "result.pickle"
        call.write_bytes(pickle.dumps((target, kwargs)))
        command = [sys.executable, "-m", "sd3coreml.verify.isolated", str(call), str(result)]
        started = time.monotonic()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, stderr = child.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            _, stderr = child.communicate()
            lines = last_lines(stderr or "")
            return ChildResult(
                failure=failure("timeout", timeout_s, lines, timeout_s=timeout_s), stderr=lines, pid=child.pid
            )
        seconds, lines = round(time.monotonic() - started, 3), last_lines(stderr or "")
        if child.returncode < 0:
            name = signal.Signals(-child.returncode).name
            return ChildResult(failure=failure("signal", seconds, lines, signal=name), stderr=lines, pid=child.pid)
        if child.returncode != 0 or not result.is_file():
            return ChildResult(
                failure=failure("exit", seconds, lines, exit_code=child.returncode), stderr=lines, pid=child.pid
            )
        return ChildResult(value=pickle.loads(result.read_bytes()), stderr=lines, pid=child.pid)


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
