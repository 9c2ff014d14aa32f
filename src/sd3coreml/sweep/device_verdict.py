"""Did the Neural Engine run a stage? Plain decisions over what a Mac recorded (device_profile.py).

Core ML's compute plan says what Core ML would prefer, not what ran; a stage can load, then
run on the CPU without a word, or kill its process at the first prediction (coremltools#2758).
So the verdict combines three records of one stage:

- placement: the plan's preferred device per op, nested blocks included, weight ops (`const`,
  `constexpr_*`) left out, weighted by the plan's estimated cost where it gives one;
- the Neural Engine compiler's failure markers in the child's stderr (and, unverified, in the
  unified log of its pid);
- timing: the median prediction under CPU_AND_NE against CPU_ONLY.

Verdicts, worst first: `failed` (a marker, a signal, a timeout), `fell_back` (CPU_AND_NE not
`min_speedup` times faster than CPU_ONLY: the work ran on the CPU), `partial` (less than
`neural_engine_min_pct` of the cost-weighted ops placed on the Neural Engine), `neural_engine`.
"""

from dataclasses import dataclass

DEVICES = ("neural_engine", "gpu", "cpu")
# A stage's (and a layout's) columns in the sweep summary.
DEVICE_COLUMNS = ("verdict", "neural_engine_pct", "first_load_s", "predict_s", "cpu_only_predict_s", "step_s")
VERDICTS = ("failed", "fell_back", "partial", "neural_engine")  # worst first
# What the Neural Engine compiler and runtime write when a compile or load fails.
FAILURE_MARKERS = (
    "ANECCompile() FAILED",
    "MaxLiveInLiveOutExceeded",
    "E5RT",
    "ANEProgramProcessRequestDirect() Failed",
    "Failed to compile the model for the Neural Engine",
)


@dataclass(frozen=True)
class PlacedOp:
    """One op of a compute plan: its operator, preferred device (None: the plan gives none), cost."""

    operator: str
    device: str | None
    cost: float | None = None


@dataclass(frozen=True)
class VerdictThresholds:
    neural_engine_min_pct: float = 90.0
    min_speedup: float = 1.5


def is_weight_op(operator: str) -> bool:
    return operator == "const" or operator.startswith("constexpr_")


def walk_operations(block):
    """Every operation of a compute plan's block, nested blocks (loops, conditionals) included."""
    for operation in block.operations:
        yield operation
        for nested in getattr(operation, "blocks", None) or ():
            yield from walk_operations(nested)


def placement(ops: list[PlacedOp]) -> dict:
    """Compute ops per preferred device, and each device's share of their cost (of their count
    where the plan gives no cost)."""
    compute = [op for op in ops if not is_weight_op(op.operator)]
    counts = {device: sum(op.device == device for op in compute) for device in DEVICES}
    counts["no_device"] = sum(op.device is None for op in compute)
    costed = all(op.cost is not None for op in compute) and sum(op.cost for op in compute) > 0
    weight = {id(op): (op.cost if costed else 1.0) for op in compute}
    total = sum(weight.values())
    share = {device: 100.0 * sum(weight[id(op)] for op in compute if op.device == device) / total if total else 0.0
             for device in DEVICES}  # fmt: skip
    return {"ops": {**counts, "total": len(compute)}, "weighted_by": "cost" if costed else "count", "pct": share}


def failure_markers(lines: list[str]) -> list[str]:
    """The lines holding a Neural Engine failure marker."""
    return [line for line in lines if any(marker in line for marker in FAILURE_MARKERS)]


def verdict(profile: dict, thresholds: VerdictThresholds = VerdictThresholds()) -> tuple[str, str]:
    """(verdict, why) of one stage's profile."""
    if "failed" in profile:
        return "failed", profile["failed"]
    if profile.get("markers"):
        return "failed", f"Neural Engine marker: {profile['markers'][0].strip()}"
    speedup = profile["cpu_only_predict_s"] / profile["predict_s"] if profile["predict_s"] > 0 else float("inf")
    if round(speedup, 6) < thresholds.min_speedup:  # 0.15 / 0.1 is 1.4999999999999998
        return (
            "fell_back",
            f"CPU_AND_NE only {speedup:.2f}x faster than CPU_ONLY (at least {thresholds.min_speedup:g}x)",
        )
    share = profile["placement"]["pct"]["neural_engine"]
    if share < thresholds.neural_engine_min_pct:
        return "partial", f"{share:.1f}% of the ops' {profile['placement']['weighted_by']} on the Neural Engine"
    return "neural_engine", f"{share:.1f}% on the Neural Engine, {speedup:.2f}x faster than CPU_ONLY"


def worst(verdicts: list[str]) -> str:
    """A layout's verdict: its worst stage's."""
    return min(verdicts, key=VERDICTS.index)


def step_cost_s(profile: dict) -> float:
    """What one denoising step costs the app for this stage: load, one prediction, unload (reduceMemory)."""
    return profile["step"]["load_s"] + profile["step"]["predict_s"] + profile["step"]["unload_s"]
