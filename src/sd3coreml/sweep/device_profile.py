"""What a Mac's Core ML does with one stage package: placement, timings, markers (macOS only).

`profile-on-device` measures a stage in a fresh child process (`isolated`), on a copy
compiled at a new path, so Core ML's compile cache cannot make the first load warm:

1. the first load under CPU_AND_NE, timed before any compute-plan call (it includes the
   Neural Engine's own compile, the slow part of an app's first launch);
2. the median of a few predictions under CPU_AND_NE, then under CPU_ONLY;
3. the app's cost of one step: load, predict once, unload, as its `reduceMemory` mode does
   with every stage at every step;
4. the compute plan (`MLComputePlan`, CPU_AND_NE): the preferred device and estimated cost of
   every op, nested blocks included.

The parent searches the child's stderr, and unverified the unified log of its pid, for the
Neural Engine compiler's failure markers. `device_verdict` turns the record into a verdict.
On any other host the step refuses with one line (the sweep says `needs a Mac`); on a macOS
too old for the package, or where the child dies or hangs, the record says so.
"""

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sd3coreml.errors import PipelineError
from sd3coreml.sweep.device_verdict import (
    DEVICE_COLUMNS,
    PlacedOp,
    VerdictThresholds,
    failure_markers,
    placement,
    verdict,
    walk_operations,
)

# A stage's compile, loads and predictions; past this Core ML counts as hung.
PROFILE_TIMEOUT_S = 1800
DEVICE_NAMES = {
    "MLNeuralEngineComputeDevice": "neural_engine",
    "MLGPUComputeDevice": "gpu",
    "MLCPUComputeDevice": "cpu",
}
UNIFIED_LOG_TIMEOUT_S = 120


def require_macos(package: Path) -> None:
    if sys.platform != "darwin":
        raise PipelineError(
            f"{package}: on-device measurement needs a Mac (Core ML runs only on macOS); "
            "run `snakemake sweep` on a Mac over the same files"
        )


def device_columns(profile: dict, thresholds: VerdictThresholds = VerdictThresholds()) -> dict:
    """The sweep summary's columns for one stage's profile."""
    if "unavailable" in profile:
        return dict.fromkeys(DEVICE_COLUMNS, profile["unavailable"])
    judged, _ = verdict(profile, thresholds)
    if "failed" in profile:
        return {**dict.fromkeys(DEVICE_COLUMNS, f"failed: {profile['failed']}"), "verdict": judged}
    return {
        "verdict": judged,
        "neural_engine_pct": profile["placement"]["pct"]["neural_engine"],
        "first_load_s": profile["first_load_s"],
        "predict_s": profile["predict_s"],
        "cpu_only_predict_s": profile["cpu_only_predict_s"],
        "step_s": profile["step"]["load_s"] + profile["step"]["predict_s"] + profile["step"]["unload_s"],
    }


def zero_inputs(package: Path) -> dict:
    import numpy as np

    from sd3coreml.convert.package import read_spec

    dtypes = {65552: np.float16, 65568: np.float32, 131104: np.int32}  # ArrayFeatureType.ArrayDataType
    inputs = {}
    for feature in read_spec(package).description.input:
        array = feature.type.multiArrayType
        inputs[feature.name] = np.zeros(tuple(array.shape), dtype=dtypes.get(array.dataType, np.float32))
    return inputs


def planned_ops(compiled: str) -> list[PlacedOp]:
    """The compute plan's preferred device and cost of every op (macOS, in the child)."""
    import coremltools as ct
    from coremltools.models.compute_plan import MLComputePlan

    plan = MLComputePlan.load_from_path(compiled, compute_units=ct.ComputeUnit.CPU_AND_NE)
    ops = []
    for operation in walk_operations(plan.model_structure.program.functions["main"].block):
        usage = plan.get_compute_device_usage_for_mlprogram_operation(operation)
        cost = plan.get_estimated_cost_for_mlprogram_operation(operation)
        device = None if usage is None else DEVICE_NAMES.get(type(usage.preferred_compute_device).__name__)
        ops.append(PlacedOp(operation.operator_name, device, None if cost is None else cost.weight))
    return ops


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def median_predict_s(model, inputs: dict, runs: int) -> float:
    return statistics.median(timed(lambda: model.predict(inputs)) for _ in range(runs))


def profile_package(package: str, runs: int = 5) -> dict:
    """In the child process: every Core ML measurement of one package (see the module docstring)."""
    import gc

    import coremltools as ct

    inputs = zero_inputs(Path(package))
    with tempfile.TemporaryDirectory() as scratch:
        # A new copy at a new path: Core ML caches Neural Engine compiles by model path.
        copy = Path(scratch) / f"stage-{time.time_ns()}.mlpackage"
        shutil.copytree(package, copy)
        compiled = ct.models.utils.compile_model(str(copy), str(Path(scratch) / f"{copy.stem}.mlmodelc"))
        started = time.perf_counter()
        model = ct.models.CompiledMLModel(compiled, compute_units=ct.ComputeUnit.CPU_AND_NE)
        first_load = time.perf_counter() - started
        predict = median_predict_s(model, inputs, runs)
        del model
        cpu_model = ct.models.CompiledMLModel(compiled, compute_units=ct.ComputeUnit.CPU_ONLY)
        cpu_predict = median_predict_s(cpu_model, inputs, runs)
        del cpu_model
        step = app_step(compiled, inputs, ct, gc)
        ops = planned_ops(compiled)
    return {
        "package": package,
        "compute_units": "CPU_AND_NE",
        "placement": placement(ops),
        "first_load_s": first_load,
        "predict_s": predict,
        "cpu_only_predict_s": cpu_predict,
        "predict_runs": runs,
        "step": step,
    }


def app_step(compiled: str, inputs: dict, ct, gc) -> dict:
    """One denoising step of the app for this stage: load, one prediction, unload."""
    started = time.perf_counter()
    model = ct.models.CompiledMLModel(compiled, compute_units=ct.ComputeUnit.CPU_AND_NE)
    loaded = time.perf_counter()
    model.predict(inputs)
    predicted = time.perf_counter()
    del model
    gc.collect()
    return {"load_s": loaded - started, "predict_s": predicted - loaded, "unload_s": time.perf_counter() - predicted}


def unified_log_lines(pid: int) -> list[str]:
    """What the unified log holds for a finished child's pid (macOS `log show`; unverified)."""
    command = ["log", "show", "--style", "compact", "--last", "30m", "--predicate", f"processID == {pid}"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=UNIFIED_LOG_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return result.stdout.splitlines()


def isolated_profile(package: Path, runs: int, timeout_s: float = PROFILE_TIMEOUT_S) -> dict:
    """The profile, or what kept Core ML from making one: an old macOS, a signal, a hang."""
    from sd3coreml.verify.coreml_runtime import spec_version, unavailable_reason
    from sd3coreml.verify.isolated import describe, run_isolated

    require_macos(package)
    reason = unavailable_reason(spec_version(package))
    if reason is not None:
        return {"package": str(package), "unavailable": reason}
    kwargs = {"package": str(package), "runs": runs}
    result = run_isolated("sd3coreml.sweep.device_profile:profile_package", kwargs, timeout_s)
    profile = result.value if result.ok else {"package": str(package), "failed": describe(result.failure)}
    profile["stderr"] = result.stderr
    profile["markers"] = failure_markers(result.stderr)
    profile["unified_log_markers_unverified"] = failure_markers(unified_log_lines(result.pid)) if result.pid else []
    return profile
