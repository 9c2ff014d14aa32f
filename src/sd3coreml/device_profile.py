"""What decides whether a stage works on device, measured by Core ML itself (macOS only).

- Placement: the compute plan (`MLComputePlan`) of the compiled package says which device
  Core ML prefers for every op under CPU_AND_NE. It must be read: a model loaded with
  CPU_AND_NE runs whatever the Neural Engine refuses on the CPU without a word.
- First load: loading the package with CPU_AND_NE, which includes the Neural Engine's own
  compile of the program (the slow part of an app's first launch).
- Predict: the median of a few predictions on zero inputs of the package's declared shapes.

On any other host the step refuses with one line; the sweep then reports `needs a Mac`. On a
macOS too old for the package (iOS18 packages need macOS 15) the profile records that; every
Core ML call runs in a child process (`isolated`), so a Neural Engine crash or a hang is a
recorded result, not a dead job.
"""

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sd3coreml.atomic import written_atomically
from sd3coreml.errors import PipelineError

# A stage's compile, load and predictions; past this Core ML counts as hung.
PROFILE_TIMEOUT_S = 1800
DEVICE_NAMES = {
    "MLNeuralEngineComputeDevice": "neural_engine",
    "MLGPUComputeDevice": "gpu",
    "MLCPUComputeDevice": "cpu",
}


def require_macos(package: Path) -> None:
    if sys.platform != "darwin":
        raise PipelineError(
            f"{package}: on-device measurement needs a Mac (Core ML runs only on macOS); "
            "run `snakemake sweep` on a Mac over the same files"
        )


def count_placements(devices: list[str | None]) -> dict:
    """Ops per preferred device; ops with no device (constants, weights) are not counted."""
    counts = {"neural_engine": 0, "gpu": 0, "cpu": 0}
    for device in devices:
        if device is not None:
            counts[device] += 1
    return {"total": sum(counts.values()), **counts}


def device_columns(profile: dict) -> dict:
    """The sweep summary's columns for one stage's profile."""
    if "unavailable" in profile or "failed" in profile:
        shown = profile.get("unavailable") or f"failed: {profile['failed']}"
        return dict.fromkeys(("neural_engine_ops_pct", "first_load_s", "predict_s"), shown)
    ops = profile["ops"]
    share = 100.0 * ops["neural_engine"] / ops["total"] if ops["total"] else 0.0
    return {"neural_engine_ops_pct": share, "first_load_s": profile["first_load_s"], "predict_s": profile["predict_s"]}


def zero_inputs(package: Path) -> dict:
    import numpy as np

    from sd3coreml.package import read_spec

    dtypes = {65552: np.float16, 65568: np.float32, 131104: np.int32}  # ArrayFeatureType.ArrayDataType
    inputs = {}
    for feature in read_spec(package).description.input:
        array = feature.type.multiArrayType
        inputs[feature.name] = np.zeros(tuple(array.shape), dtype=dtypes.get(array.dataType, np.float32))
    return inputs


def preferred_devices(compiled: str) -> list[str | None]:
    import coremltools as ct
    from coremltools.models.compute_plan import MLComputePlan

    plan = MLComputePlan.load_from_path(compiled, compute_units=ct.ComputeUnit.CPU_AND_NE)
    devices = []
    for operation in plan.model_structure.program.functions["main"].block.operations:
        usage = plan.get_compute_device_usage_for_mlprogram_operation(operation)
        devices.append(None if usage is None else DEVICE_NAMES[type(usage.preferred_compute_device).__name__])
    return devices


def profile_package(package: Path, runs: int = 5) -> dict:
    """In a child process (isolated_profile): Core ML's compile, placement, load and predictions."""
    import coremltools as ct

    with tempfile.TemporaryDirectory() as scratch:
        compiled = ct.models.utils.compile_model(str(package), str(Path(scratch) / "stage.mlmodelc"))
        devices = preferred_devices(compiled)
        started = time.perf_counter()
        model = ct.models.CompiledMLModel(compiled, compute_units=ct.ComputeUnit.CPU_AND_NE)
        first_load = time.perf_counter() - started
        inputs, times = zero_inputs(package), []
        for _ in range(runs):
            started = time.perf_counter()
            model.predict(inputs)
            times.append(time.perf_counter() - started)
    return {
        "package": str(package),
        "compute_units": "CPU_AND_NE",
        "ops": count_placements(devices),
        "first_load_s": first_load,
        "predict_s": statistics.median(times),
        "predict_runs": runs,
    }


def isolated_profile(package: Path, runs: int, timeout_s: float = PROFILE_TIMEOUT_S) -> dict:
    """The profile, or what kept Core ML from making one: an old macOS, a signal, a hang."""
    from sd3coreml.coreml_runtime import spec_version, unavailable_reason
    from sd3coreml.isolated import describe, run_isolated

    require_macos(package)
    reason = unavailable_reason(spec_version(package))
    if reason is not None:
        return {"package": str(package), "unavailable": reason}
    kwargs = {"package": str(package), "runs": runs}
    result = run_isolated("sd3coreml.device_profile:profile_package", kwargs, timeout_s)
    return (
        result.value if result.ok else {"package": str(package), "failed": describe(result.failure), **result.failure}
    )


def profile_command(args) -> None:
    profile = isolated_profile(args.package, args.runs)
    with written_atomically(args.out) as temporary:
        temporary.write_text(json.dumps(profile, indent=2, sort_keys=True) + "\n")


def register_cli(subparsers) -> None:
    step = subparsers.add_parser("profile-on-device", help="op placement, first load and predict time (macOS)")
    step.add_argument("--package", type=Path, required=True)
    step.add_argument("--out", type=Path, required=True, help="the profile JSON to write")
    step.add_argument("--runs", type=int, default=5)
    step.set_defaults(func=profile_command)
