"""A step's structured parameters: one JSON object, read from a file or from standard input.

Rules hand a step its plain values as flags and everything structured (a folder's entries
and manifest request, a report's measurements and bars, a sweep's plan) as one JSON spec,
written at parse time and piped in (`--spec -`), so no step parses a format of its own.
"""

import json
import sys
from pathlib import Path

from sd3coreml.errors import PipelineError


def read_spec(source, step: str) -> dict:
    """The JSON object at `source` (a path, or `-` for standard input); one line naming it where it is not one."""
    try:
        text = sys.stdin.read() if str(source) == "-" else Path(source).read_text(encoding="utf-8")
        spec = json.loads(text)
    except (OSError, ValueError) as error:
        raise PipelineError(f"{source}: cannot read the {step} spec ({error}); write it as JSON") from None
    if not isinstance(spec, dict):
        raise PipelineError(f"{source}: the {step} spec must be a JSON object")
    return spec


def write_spec(spec: dict) -> str:
    """A spec as the rules pass it: canonical JSON, so an unchanged spec is an unchanged param."""
    return json.dumps(spec, sort_keys=True)
