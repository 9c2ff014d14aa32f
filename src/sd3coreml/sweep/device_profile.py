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

The child announces each of these phases on its stderr before starting it (`compile`,
`cpu_and_ne_load`, `cpu_and_ne_predict`, `cpu_only`, `steps`, `plan`); the parent reads every
line the child prints and keeps each phase's distinct lines, classified, with their counts
(`device_verdict.StderrRecord`). Unverified and kept out of the verdict, it also searches the
unified log from the child's start for the child's pid and for the Neural Engine compiler's
own processes (`ANECompilerService`, `aned`), which the child's stderr cannot show.
`device_verdict` turns the record into a verdict. On any other host the step refuses with one
line (the sweep says `needs a Mac`); on a macOS too old for the package, or where the child
dies or hangs, the record says so.
"""

import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from sd3coreml.errors import PipelineError
from sd3coreml.sweep.device_verdict import (
    COMPILE,
    CPU_AND_NE_LOAD,
    CPU_AND_NE_PREDICT,
    CPU_ONLY,
    DEVICE_COLUMNS,
    PLAN,
    STEPS,
    PlacedOp,
    StderrRecord,
    VerdictThresholds,
    deciding_phase,
    line_kind,
    normalized,
    phase_announcement,
    phase_lines,
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
# The Neural Engine's compiler and daemon: they log in their own processes, not in the child's.
NEURAL_ENGINE_PROCESSES = ("ANECompilerService", "aned")
# A `log show --style compact` entry: `2026-10-06 10:41:02.207 E  aned[312:5a8b53a] [subsystem:category] message`.
COMPACT_LOG_ENTRY = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\s+(?P<type>\S+)\s+"
    r"(?P<process>.+?)\[(?P<pid>\d+):(?P<thread>[0-9a-fA-F]+)\]\s?(?P<message>.*)$"
)


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
    # The temporary folder is the child root `isolated` made for this child and removes after it.
    with tempfile.TemporaryDirectory() as scratch:
        announce_phase(COMPILE)
        # A new copy at a new path: Core ML caches Neural Engine compiles by model path.
        copy = Path(scratch) / f"stage-{time.time_ns()}.mlpackage"
        shutil.copytree(package, copy)
        compiled = ct.models.utils.compile_model(str(copy), str(Path(scratch) / f"{copy.stem}.mlmodelc"))
        announce_phase(CPU_AND_NE_LOAD)
        started = time.perf_counter()
        model = ct.models.CompiledMLModel(compiled, compute_units=ct.ComputeUnit.CPU_AND_NE)
        first_load = time.perf_counter() - started
        announce_phase(CPU_AND_NE_PREDICT)
        predict = median_predict_s(model, inputs, runs)
        del model
        announce_phase(CPU_ONLY)
        cpu_model = ct.models.CompiledMLModel(compiled, compute_units=ct.ComputeUnit.CPU_ONLY)
        cpu_predict = median_predict_s(cpu_model, inputs, runs)
        del cpu_model
        announce_phase(STEPS)
        step = app_step(compiled, inputs, ct, gc)
        announce_phase(PLAN)
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


def announce_phase(phase: str) -> None:
    """In the child: mark where a phase's stderr lines begin. Flushed before Core ML's next call,
    which writes to the same stderr."""
    print(phase_announcement(phase), file=sys.stderr, flush=True)


def unified_log_command(pid: int, started: datetime) -> list[str]:
    """`log show` over the unified log from a child's start (whole seconds, local time): the
    child's own entries and the Neural Engine compiler's, which run in other processes."""
    processes = " OR ".join(f'process == "{name}"' for name in NEURAL_ENGINE_PROCESSES)
    since = started.replace(microsecond=0).strftime("%Y-%m-%d %H:%M:%S")
    return ["log", "show", "--style", "compact", "--start", since, "--predicate", f"processID == {pid} OR {processes}"]


def unified_log_entries(text: str) -> list[dict]:
    """The entries of `log show --style compact` output (header left out; a message's
    continuation lines joined to it)."""
    entries = []
    for line in text.splitlines():
        match = COMPACT_LOG_ENTRY.match(line)
        if match:
            entries.append({**match.groupdict(), "pid": int(match["pid"])})
        elif entries and line.strip():
            entries[-1]["message"] += "\n" + line
    return entries


def unified_log_findings(entries: list[dict]) -> dict:
    """Entries per process, and every distinct classified message line per process with its count.
    Kept out of the verdict: the compiler's processes serve every process on the Mac."""
    per_process: dict[str, int] = {}
    lines: dict[tuple[str, str], dict] = {}
    for entry in entries:
        per_process[entry["process"]] = per_process.get(entry["process"], 0) + 1
        for text in map(normalized, entry["message"].splitlines()):
            kind, key = line_kind(text), (entry["process"], text)
            if kind is not None:
                lines.setdefault(key, {"process": entry["process"], "kind": kind, "line": text, "count": 0})
                lines[key]["count"] += 1
    return {"entries": per_process, "lines": list(lines.values())}


def unified_log_record(pid: int, started_at: float) -> dict:
    """What the unified log holds from a finished child's start (macOS `log show`; unverified)."""
    command = unified_log_command(pid, datetime.fromtimestamp(started_at))
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=UNIFIED_LOG_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"command": command, "error": f"{type(error).__name__}: {error}"}
    record = {"command": command, **unified_log_findings(unified_log_entries(result.stdout))}
    if result.returncode != 0:
        record["error"] = f"exit code {result.returncode}: {result.stderr.strip()[-300:]}"
    return record


def isolated_profile(package: Path, runs: int, timeout_s: float = PROFILE_TIMEOUT_S) -> dict:
    """The profile, or what kept Core ML from making one: an old macOS, a signal, a hang."""
    from sd3coreml.verify.coreml_runtime import spec_version, unavailable_reason
    from sd3coreml.verify.isolated import describe, run_isolated

    require_macos(package)
    reason = unavailable_reason(spec_version(package))
    if reason is not None:
        return {"package": str(package), "unavailable": reason}
    kwargs = {"package": str(package), "runs": runs}
    stderr = StderrRecord()
    result = run_isolated("sd3coreml.sweep.device_profile:profile_package", kwargs, timeout_s, stderr.feed)
    profile = result.value if result.ok else {"package": str(package), "failed": describe(result.failure)}
    return with_stderr(profile, stderr.record(), result.stderr) | {
        "unified_log_unverified": unified_log_record(result.pid, result.started_at) if result.pid else {}
    }


def with_stderr(profile: dict, stderr: dict, tail: list[str]) -> dict:
    """The profile with the child's classified stderr, its last lines, and the lines of the phase
    that decides the verdict (where one does)."""
    profile = {**profile, "stderr": stderr, "stderr_tail": tail}
    phase = deciding_phase(profile)
    if phase is not None:
        profile["deciding_phase"] = {"phase": phase, "lines": phase_lines(stderr, phase)}
    return profile
