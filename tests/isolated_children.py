"""Children for the tests of `isolated.run_isolated` (unit/verify, unit/sweep): functions it runs in a child."""

import os
import signal
import sys
import time


def add(a, b):
    return a + b


def kill_itself():
    print("E5RT: ANECCompile() FAILED (a Neural Engine compiler's last words)", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def sleep_for(seconds):
    print("loading...", file=sys.stderr, flush=True)
    time.sleep(seconds)


def fail():
    raise RuntimeError("Core ML said no")


def leave_temporary_files(size):
    """What Core ML's children leave: a compiled copy in the temporary folder. Returns its folder."""
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(suffix=".mlmodelc"))
    (folder / "weight.bin").write_bytes(b"\0" * size)
    print(f"temporary copy: {folder}", file=sys.stderr, flush=True)
    return str(folder)


def leave_temporary_files_then_die(size):
    leave_temporary_files(size)
    os.kill(os.getpid(), signal.SIGKILL)


def leave_temporary_files_then_hang(size, seconds):
    leave_temporary_files(size)
    time.sleep(seconds)


def print_to_stderr(lines, then_kill=False):
    """A recorded stderr, printed again line by line (the phase announcements included)."""
    for line in lines:
        print(line, file=sys.stderr, flush=True)
    if then_kill:
        os.kill(os.getpid(), signal.SIGKILL)
    return len(lines)
