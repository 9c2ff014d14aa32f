"""Test helper: on PYTHONPATH of the session's demo build (tests/conftest.py).

With SD3COREML_TEST_RECORD_MODULES naming a folder, every `python -m sd3coreml STEP` job
writes, at exit, the step and the sd3coreml modules it had loaded, so tests/test_code_closure.py
can hold each step's declared code closure against what its jobs really ran.
"""

import atexit
import json
import os
import sys
from pathlib import Path

RECORDS = os.environ.get("SD3COREML_TEST_RECORD_MODULES")


def record() -> None:
    if Path(sys.argv[0]).parts[-2:] != ("sd3coreml", "__main__.py") or len(sys.argv) < 2:
        return
    loaded = sorted(name for name in sys.modules if name == "sd3coreml" or name.startswith("sd3coreml."))
    out = Path(RECORDS) / f"{sys.argv[1]}-{os.getpid()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"step": sys.argv[1], "modules": loaded}))


if RECORDS:
    atexit.register(record)
