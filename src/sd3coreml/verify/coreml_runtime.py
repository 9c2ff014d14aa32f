"""Core ML itself: whether this host can run a package, and running it in a child process.

Core ML predicts only on macOS, and loads an ML program only on the macOS that matches its
conversion target: iOS16 packages need macOS 13, iOS17 macOS 14, iOS18 (spec 9) macOS 15.
coremltools 9's own guard compares against a compile-time constant and does not catch an
older macOS, whose `predict` then raises. Every Core ML call runs in `isolated`'s child
process, so a crash or a hang is recorded, never fatal.
"""

import platform
import sys
from pathlib import Path

from sd3coreml.verify.isolated import describe, run_isolated

# The spec version of an ML program converted for each target, and the macOS that loads it.
TARGET_OF_SPEC = {7: "iOS16", 8: "iOS17", 9: "iOS18"}
MACOS_FOR_TARGET = {"iOS16": 13, "iOS17": 14, "iOS18": 15}
PREDICT_TIMEOUT_S = 600
COMPUTE_UNITS = ("CPU_AND_NE", "CPU_ONLY", "CPU_AND_GPU", "ALL")


def required_macos(spec_version: int) -> int:
    return MACOS_FOR_TARGET[TARGET_OF_SPEC.get(spec_version, "iOS18")]


def macos_major(version: str | None = None) -> int | None:
    """This Mac's major version (15 for 15.3.1); None off macOS."""
    if sys.platform != "darwin" and version is None:
        return None
    release = version if version is not None else platform.mac_ver()[0]
    return int(release.split(".")[0]) if release else None


def unavailable_reason(spec_version: int, platform_name: str = sys.platform, macos: int | None = None) -> str | None:
    """Why Core ML cannot run a package of this spec version here (`needs macOS 15`), or None."""
    if platform_name != "darwin":
        return "needs macOS"
    needed = required_macos(spec_version)
    have = macos if macos is not None else macos_major()
    return f"needs macOS {needed}" if have is None or have < needed else None


def spec_version(package: Path) -> int:
    from sd3coreml.convert.package import read_spec

    return read_spec(package).specificationVersion


def predict(package: str, inputs: dict, compute_units: str = "CPU_AND_NE") -> dict:
    """In the child: one Core ML prediction, outputs as numpy arrays."""
    import coremltools as ct
    import numpy as np

    model = ct.models.MLModel(package, compute_units=getattr(ct.ComputeUnit, compute_units))
    return {name: np.asarray(value) for name, value in model.predict(inputs).items()}


def isolated_predict(
    package: Path, inputs: dict, compute_units: str = "CPU_AND_NE", timeout_s: float = PREDICT_TIMEOUT_S
) -> dict | str:
    """Core ML's outputs, or why there are none: `needs macOS 15`, or a failure record as one line."""
    reason = unavailable_reason(spec_version(package))
    if reason is not None:
        return reason
    kwargs = {"package": str(package), "inputs": inputs, "compute_units": compute_units}
    result = run_isolated("sd3coreml.verify.coreml_runtime:predict", kwargs, timeout_s)
    return result.value if result.ok else {"failed": describe(result.failure), **result.failure}
