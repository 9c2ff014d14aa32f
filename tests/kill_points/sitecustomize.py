"""Test helper for tests/test_reproducible.py, on PYTHONPATH of one build only.

With SD3COREML_TEST_STOP_BEFORE_MOVE set, a process stops itself (SIGSTOP) whenever an
output is complete under its temporary name and about to be moved into place, so the test
can SIGKILL a job exactly mid-write. Writes of tiny demo packages last milliseconds, too
short to hit by polling.
"""

import os
import signal

if os.environ.get("SD3COREML_TEST_STOP_BEFORE_MOVE"):
    from sd3coreml import atomic

    move_into_place = atomic.replace_path

    def stop_then_move(new, target):
        os.kill(os.getpid(), signal.SIGSTOP)
        move_into_place(new, target)

    atomic.replace_path = stop_then_move
