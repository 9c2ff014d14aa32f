"""Children for tests/unit/verify/test_coreml_runtime.py: functions `isolated.run_isolated` runs in a child process."""

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
