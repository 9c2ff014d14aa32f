"""Did the Neural Engine run a stage? Plain decisions over what a Mac recorded (device_profile.py).

Core ML's compute plan says what Core ML would prefer, not what ran; a stage can load, then
run on the CPU without a word, or kill its process at the first prediction (coremltools#2758).
So the verdict combines three records of one stage:

- placement: the plan's preferred device per op, nested blocks included, weight ops (`const`,
  `constexpr_*`) left out, weighted by the plan's estimated cost where it gives one;
- the child's stderr, each line classified by what it says and by the phase that printed it
  (the child announces each phase on stderr before it starts; see `PHASES`);
- timing: the median prediction under CPU_AND_NE against CPU_ONLY.

Verdicts, worst first: `failed` (the child died or hung, or a Neural Engine failure line was
printed while the stage ran under CPU_AND_NE), `fell_back` (CPU_AND_NE not `min_speedup` times
faster than CPU_ONLY: the work ran on the CPU), `unknown` (needs a look: an E5RT line this module
cannot place, or a Neural Engine failure outside a CPU_AND_NE run), `partial` (less than
`neural_engine_min_pct` of the cost-weighted ops placed on the Neural Engine), `neural_engine`.

Not every E5RT line is a failure: E5RT (Core ML's execution runtime) reports CPU-side (BNNS
graph) problems of models that load and run on the Neural Engine (coremltools#2450, under
`.cpuAndNeuralEngine`: `E5RT: Error(s) occurred compiling MIL to BNNS graph`; FluidAudio#294:
`E5RT encountered an STL exception` on a model that loads); those are notes. It also reports
real Neural Engine trouble (`E5RT: No memory object bound to port` on large activations), which
this module cannot tell from other E5RT lines: any other E5RT line makes the verdict `unknown`,
never `neural_engine`. Lines printed under CPU_ONLY never decide a Neural Engine failure.
"""

import re
from dataclasses import dataclass

DEVICES = ("neural_engine", "gpu", "cpu")
# A stage's (and a layout's) columns in the sweep summary.
DEVICE_COLUMNS = ("verdict", "neural_engine_pct", "first_load_s", "predict_s", "cpu_only_predict_s", "step_s")
VERDICTS = ("failed", "fell_back", "unknown", "partial", "neural_engine")  # worst first

# The child prints this, then a phase's name, on a line of its own before each phase.
PHASE_MARKER = "sd3coreml-phase: "
# A measuring child's phases in order; lines before the first announcement belong to "start".
START, COMPILE, CPU_AND_NE_LOAD, CPU_AND_NE_PREDICT, CPU_ONLY, STEPS, PLAN = (
    "start", "compile", "cpu_and_ne_load", "cpu_and_ne_predict", "cpu_only", "steps", "plan",
)  # fmt: skip
PHASES = (START, COMPILE, CPU_AND_NE_LOAD, CPU_AND_NE_PREDICT, CPU_ONLY, STEPS, PLAN)
# The phases that load and run the stage under CPU_AND_NE: a Neural Engine failure there decides.
NEURAL_ENGINE_PHASES = (CPU_AND_NE_LOAD, CPU_AND_NE_PREDICT, STEPS)

# What a line says, most telling first.
NEURAL_ENGINE_FAILURE, UNEXPLAINED_E5RT, CPU_SIDE_E5RT = "neural_engine_failure", "e5rt", "cpu_side_e5rt"
# Lines only the Neural Engine's compiler and runtime print when they fail.
NEURAL_ENGINE_FAILURE_MARKERS = (
    "ANECCompile() FAILED",  # the Neural Engine compiler (coremltools#2758)
    "MILCompilerForANE",  # E5RT's Neural Engine compile
    "ANEProgramProcessRequestDirect",  # the Neural Engine refusing a prediction
    "MaxLiveInLiveOutExceeded",
    "Failed to compile the model for the Neural Engine",
    "ANECF error",  # a compiled Neural Engine program that does not load (ml-stable-diffusion#26)
)
E5RT = "E5RT"
STL_EXCEPTION = "E5RT encountered an STL exception"
# `2026-11-30 10:12:01.123 python[4242:1a2b] ` (NSLog, os_log mirrored to stderr): left out, so
# that one message printed at every prediction is kept once, with its count.
LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d[ T][\d:.]+(?:[+-]\d{4})?\s+\S+\[\d+(?::[0-9a-fA-Fx]+)?\]\s+")
# What the record keeps of one child: distinct lines per phase and kind of line, each this long at most.
DISTINCT_LINES_PER_PHASE = 100
LINE_CHARS = 600


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


def phase_announcement(phase: str) -> str:
    return f"{PHASE_MARKER}{phase}"


def announced_phase(line: str) -> str | None:
    """The phase a line announces, or None."""
    text = line.strip()
    if not text.startswith(PHASE_MARKER):
        return None
    return text[len(PHASE_MARKER) :].strip() or None


def normalized(line: str) -> str:
    return LOG_PREFIX.sub("", line.strip())[:LINE_CHARS]


def stl_exception_message(line: str) -> str | None:
    """`unordered_map::at: key not found` of `E5RT encountered an STL exception. msg = unordered_map::at: ...`."""
    if STL_EXCEPTION not in line or "msg = " not in line:
        return None
    return line.split("msg = ", 1)[1].strip().rstrip(".").strip() or None


def line_kind(line: str, stl_messages: tuple[str, ...] = ()) -> str | None:
    """What a stderr line says: a Neural Engine failure, a CPU-side (BNNS) E5RT note, another E5RT
    line, or nothing of interest (None). `stl_messages`: the messages of STL exceptions printed
    before, which E5RT repeats on its next line (`E5RT: unordered_map::at: key not found ...`)."""
    if any(marker in line for marker in NEURAL_ENGINE_FAILURE_MARKERS):
        return NEURAL_ENGINE_FAILURE
    if E5RT not in line:
        return None
    if "bnns" in line.lower() or STL_EXCEPTION in line:
        return CPU_SIDE_E5RT
    repeated = line.split(f"{E5RT}:", 1)[1].strip() if f"{E5RT}:" in line else ""
    if repeated and any(repeated.startswith(message) for message in stl_messages):
        return CPU_SIDE_E5RT
    return UNEXPLAINED_E5RT


class StderrRecord:
    """A child's stderr, read line by line as it is written, kept bounded: per phase, every
    distinct line with its kind and count (at most `DISTINCT_LINES_PER_PHASE` classified lines
    and as many plain ones; the rest only counted), so that a Neural Engine failure at the first
    load is kept however many lines follow it."""

    def __init__(self, distinct_per_phase: int = DISTINCT_LINES_PER_PHASE):
        self.distinct_per_phase = distinct_per_phase
        self.phases = [START]
        self.lines: dict[tuple[str, str], dict] = {}  # (phase, text) -> {"phase", "kind", "line", "count"}
        self.distinct: dict[tuple[str, bool], int] = {}  # (phase, classified) -> distinct lines kept
        self.dropped: dict[str, int] = {}
        self.stl_messages: tuple[str, ...] = ()

    def feed(self, line: str) -> None:
        phase = announced_phase(line)
        if phase is not None:
            self.phases.append(phase)
            return
        text = normalized(line)
        if not text:
            return
        current = self.phases[-1]
        key = (current, text)
        if key in self.lines:
            self.lines[key]["count"] += 1
            return
        kind = line_kind(text, self.stl_messages)
        message = stl_exception_message(text)
        if message is not None:
            self.stl_messages += (message,)
        if self.distinct.get((current, kind is not None), 0) >= self.distinct_per_phase:
            self.dropped[current] = self.dropped.get(current, 0) + 1
            return
        self.distinct[(current, kind is not None)] = self.distinct.get((current, kind is not None), 0) + 1
        self.lines[key] = {"phase": current, "kind": kind, "line": text, "count": 1}

    def record(self) -> dict:
        """The phases in the order the child entered them, the distinct lines in the order first
        printed, and how many distinct lines each phase had past the bound."""
        return {"phases": list(self.phases), "lines": list(self.lines.values()), "dropped": dict(self.dropped)}


def classified_stderr(lines: list[str]) -> dict:
    """The record of a whole recorded stderr (as `StderrRecord` keeps it while a child runs)."""
    record = StderrRecord()
    for line in lines:
        record.feed(line)
    return record.record()


@dataclass(frozen=True)
class StderrFinding:
    """What a child's stderr decides: `failed` or `unknown`, why, and the phase that printed it."""

    verdict: str
    why: str
    phase: str


def stderr_finding(stderr: dict) -> StderrFinding | None:
    """A Neural Engine failure printed during a CPU_AND_NE run (`failed`); else an unexplained
    E5RT line, or a Neural Engine failure printed outside those runs (`unknown`); None where the
    stderr leaves the verdict to the timings. CPU-side E5RT lines and CPU_ONLY's lines are notes."""
    lines = [line for line in stderr.get("lines", ()) if line["kind"] is not None]
    for line in lines:
        if line["kind"] == NEURAL_ENGINE_FAILURE and line["phase"] in NEURAL_ENGINE_PHASES:
            why = f"Neural Engine failure during {line['phase']}: {shown(line)}"
            return StderrFinding("failed", why, line["phase"])
    for line in lines:
        if line["phase"] != CPU_ONLY and line["kind"] in (NEURAL_ENGINE_FAILURE, UNEXPLAINED_E5RT):
            what = "an E5RT line" if line["kind"] == UNEXPLAINED_E5RT else "a Neural Engine failure outside a run"
            why = f"needs a look: {what} during {line['phase']}: {shown(line)}"
            return StderrFinding("unknown", why, line["phase"])
    return None


def shown(line: dict) -> str:
    return line["line"] + (f" (x{line['count']})" if line["count"] > 1 else "")


def deciding_phase(profile: dict) -> str | None:
    """The phase whose stderr lines decide the verdict: where the child died or hung, else where
    its stderr decides; None where the timings and the plan decide."""
    stderr = profile.get("stderr", {})
    if "failed" in profile:
        return stderr.get("phases", [None])[-1]
    finding = stderr_finding(stderr)
    return None if finding is None else finding.phase


def phase_lines(stderr: dict, phase: str | None) -> list[dict]:
    """The distinct lines one phase printed, with their counts."""
    return [line for line in stderr.get("lines", ()) if line["phase"] == phase]


def verdict(profile: dict, thresholds: VerdictThresholds = VerdictThresholds()) -> tuple[str, str]:
    """(verdict, why) of one stage's profile."""
    stderr = profile.get("stderr", {})
    if "failed" in profile:
        during = stderr.get("phases", [START])[-1]
        return "failed", profile["failed"] + (f" during {during}" if during != START else "")
    finding = stderr_finding(stderr)
    if finding is not None and finding.verdict == "failed":
        return finding.verdict, finding.why
    speedup = profile["cpu_only_predict_s"] / profile["predict_s"] if profile["predict_s"] > 0 else float("inf")
    if round(speedup, 6) < thresholds.min_speedup:  # 0.15 / 0.1 is 1.4999999999999998
        return (
            "fell_back",
            f"CPU_AND_NE only {speedup:.2f}x faster than CPU_ONLY (at least {thresholds.min_speedup:g}x)",
        )
    if finding is not None:
        return finding.verdict, finding.why
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
