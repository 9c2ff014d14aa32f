"""Core ML itself: whether this host can run a package, and running it in a child process.

Core ML predicts only on macOS, and loads an ML program only on the macOS that matches its
conversion target: iOS16 packages need macOS 13, iOS17 macOS 14, iOS18 (spec 9) macOS 15.
coremltools 9's own guard compares against a compile-time constant and does not catch an
older macOS, whose `predict` then raises. Every Core ML call runs in `isolated`'s child
process, so a crash or a hang is recorded, never fatal.

`ct.models.MLModel(<.mlpackage>)` compiles the package at every construction (coremltools 9.0,
`CoreMLPython.mm`), which can take minutes for a stage. In the child each package is compiled
once (`ct.models.utils.compile_model`, into the child's temporary root) and every prediction
loads the compiled model (`ct.models.CompiledMLModel`) and lets it go after, as the app loads,
predicts and unloads a stage at every step: `CompiledPackages`.
"""

import platform
import sys
import tempfile
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


class CompiledPackages:
    """In the child: each package compiled once, loaded for each prediction under `compute_units`.

    `compiled(package)` compiles on first use into a folder of the child's temporary root (its
    TMPDIR, which `isolated` removes however the child ends); `predict` loads the compiled
    model, predicts once and drops it.
    """

    def __init__(self, compute_units: str = "CPU_AND_NE"):
        import coremltools as ct

        if compute_units not in COMPUTE_UNITS:
            raise ValueError(f"compute units {compute_units!r}: expected one of {', '.join(COMPUTE_UNITS)}")
        self.ct = ct
        self.compute_units = compute_units
        self.scratch = Path(tempfile.mkdtemp(prefix="compiled-"))
        self.paths: dict[str, str] = {}

    def compiled(self, package) -> str:
        key = str(Path(package).resolve())
        if key not in self.paths:
            destination = self.scratch / f"{len(self.paths)}-{Path(package).stem}.mlmodelc"
            self.paths[key] = self.ct.models.utils.compile_model(str(package), str(destination))
        return self.paths[key]

    def predict(self, package, inputs: dict) -> dict:
        """One prediction, outputs as numpy arrays."""
        import numpy as np

        units = getattr(self.ct.ComputeUnit, self.compute_units)
        model = self.ct.models.CompiledMLModel(self.compiled(package), compute_units=units)
        try:
            return {name: np.asarray(value) for name, value in model.predict(inputs).items()}
        finally:
            del model


def predict(package: str, inputs: dict, compute_units: str = "CPU_AND_NE") -> dict:
    """In the child: one Core ML prediction of one package, outputs as numpy arrays."""
    return CompiledPackages(compute_units).predict(package, inputs)


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
