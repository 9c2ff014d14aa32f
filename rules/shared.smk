# What both workflows (the build, rules/common.smk, and the Mac hand-off, rules/handoff.smk)
# need first: the one-line refusal, and each step's code named by content.
import sys
from pathlib import Path

from sd3coreml.pipeline.code_closure import CodeBase


def fail(message):
    # One line and a non-zero exit, before any job runs.
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


# The code of each step, named by content (code_closure.py), from this checkout's src/.
CODE = CodeBase(Path(workflow.basedir) / "src")


def step_code(step):
    """Fingerprint of what `python -m sd3coreml STEP` runs: a job reruns when any of it changes."""
    return CODE.fingerprint(step)
