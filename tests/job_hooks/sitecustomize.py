"""Test hooks for the processes of one run (Snakemake and its jobs), each off unless its variable is set.

On PYTHONPATH of the runs that want them (tests/harness.py, tests/workflow/test_reproducible.py, tests/workflow/test_handoff.py):

- SD3COREML_TEST_STOP_BEFORE_MOVE: a process stops itself (SIGSTOP) whenever an output is
  complete under its temporary name and about to be moved into place, so a test can SIGKILL
  a job exactly mid-write (writes of tiny demo packages last milliseconds).
- SD3COREML_TEST_RECORD_MODULES=DIR: every `python -m sd3coreml STEP` writes, at exit, the
  step and the sd3coreml modules it loaded, to hold each step's code closure against them. Read
  at exit, not here: a job server's child (sd3coreml/job_server.py) runs this file's exit
  handlers with its job's environment, and its client writes no record.
- SD3COREML_TEST_TOOLCHAIN_DRIFT: every package version importlib.metadata reports reads one
  patch release on, as on a Mac whose pip resolved other wheels.
- SD3COREML_TEST_MAC_TOOLCHAIN: the same releases as a Mac installs them: no local version label
  (`torch 2.13.0`, not the team's `2.13.0+cpu`) and another Python patch level.
- SD3COREML_TEST_CLOCK_SHIFT_DAYS=N: Python's clock runs N days ahead (where libfaketime's
  LD_PRELOAD is not available: macOS strips DYLD_* from jobs started through /bin/bash).
- SD3COREML_TEST_PHYSICAL_MEMORY_MB=N: psutil reports N MB of physical memory, as on a smaller
  machine (the memory check before any job reads it).
"""

import atexit
import os
import sys

if os.environ.get("SD3COREML_TEST_STOP_BEFORE_MOVE"):
    import signal

    from sd3coreml import atomic

    move_into_place = atomic.replace_path

    def stop_then_move(new, target):
        os.kill(os.getpid(), signal.SIGSTOP)
        move_into_place(new, target)

    atomic.replace_path = stop_then_move


def record_modules() -> None:
    """Read SD3COREML_TEST_RECORD_MODULES at exit: a job server's child takes its job's environment later."""
    import json
    from pathlib import Path

    records = os.environ.get("SD3COREML_TEST_RECORD_MODULES")
    if not records or Path(sys.argv[0]).parts[-2:] != ("sd3coreml", "__main__.py") or len(sys.argv) < 2:
        return
    loaded = sorted(name for name in sys.modules if name == "sd3coreml" or name.startswith("sd3coreml."))
    out = Path(records) / f"{sys.argv[1]}-{os.getpid()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"step": sys.argv[1], "modules": loaded}))


atexit.register(record_modules)

if os.environ.get("SD3COREML_TEST_TOOLCHAIN_DRIFT"):
    import importlib.metadata

    installed_version = importlib.metadata.version
    importlib.metadata.version = lambda name: f"{installed_version(name)}.post1"

if os.environ.get("SD3COREML_TEST_MAC_TOOLCHAIN"):
    import importlib.metadata
    import platform

    installed_version, installed_python = importlib.metadata.version, platform.python_version
    importlib.metadata.version = lambda name: installed_version(name).split("+", 1)[0]
    major, minor, patch = installed_python().split(".")[:3]
    platform.python_version = lambda: f"{major}.{minor}.{int(patch) + 1}"

if days := os.environ.get("SD3COREML_TEST_CLOCK_SHIFT_DAYS"):
    import datetime
    import time

    shift = float(days) * 86400
    real_time, real_time_ns = time.time, time.time_ns
    real_gmtime, real_localtime, real_strftime = time.gmtime, time.localtime, time.strftime
    time.time = lambda: real_time() + shift
    time.time_ns = lambda: real_time_ns() + int(shift * 1e9)
    time.gmtime = lambda seconds=None: real_gmtime(time.time() if seconds is None else seconds)
    time.localtime = lambda seconds=None: real_localtime(time.time() if seconds is None else seconds)
    time.strftime = lambda form, when=None: real_strftime(form, time.localtime() if when is None else when)

    class ShiftedDatetime(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return super().now(tz) + datetime.timedelta(seconds=shift)

        @classmethod
        def utcnow(cls):
            return super().utcnow() + datetime.timedelta(seconds=shift)

        @classmethod
        def today(cls):
            return cls.now()

    datetime.datetime = ShiftedDatetime

if total_mb := os.environ.get("SD3COREML_TEST_PHYSICAL_MEMORY_MB"):
    import psutil

    real_virtual_memory = psutil.virtual_memory
    psutil.virtual_memory = lambda: real_virtual_memory()._replace(total=int(total_mb) * 10**6)
