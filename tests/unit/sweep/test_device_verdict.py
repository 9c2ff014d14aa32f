"""The verdict's reading of a measuring child's stderr: each line by what it says and by the phase that
printed it, on recorded stderr.

The E5RT and Neural Engine lines are quoted from the issues that recorded them: coremltools#2450 (a BNNS
graph compile error under .cpuAndNeuralEngine, the model runs), FluidAudio#294 (an STL exception from E5RT
on a model that loads), coremltools#2758 and others (ANECCompile() FAILED), AUTOMATIC1111's
stable-diffusion-webui#13933 (ANEProgramProcessRequestDirect() Failed). The phase announcements are what
device_profile's child prints before each phase. No stderr of this project's child on a Mac exists yet.
"""

import pytest
from harness import TESTS
from harness import recorded_profile as profile

from sd3coreml.sweep.device_profile import with_stderr
from sd3coreml.sweep.device_verdict import (
    COMPILE,
    CPU_AND_NE_LOAD,
    CPU_AND_NE_PREDICT,
    CPU_ONLY,
    CPU_SIDE_E5RT,
    DISTINCT_LINES_PER_PHASE,
    NEURAL_ENGINE_FAILURE,
    PLAN,
    STEPS,
    UNEXPLAINED_E5RT,
    VERDICTS,
    StderrRecord,
    classified_stderr,
    line_kind,
    phase_announcement,
    verdict,
    worst,
)
from sd3coreml.verify.isolated import STDERR_LINES, run_isolated


def phase(name: str) -> str:
    return phase_announcement(name)


# coremltools#2450, printed at each load under .cpuAndNeuralEngine of a model that then runs.
BNNS_GRAPH_ERROR = [
    "Error(s) occurred compiling MIL to BNNS graph:",
    "[CreateBnnsGraphProgramFromMIL]: Failed to determine convolution kernel at location at "
    "/var/folders/8j/T/sd3coreml-coreml-4242-ab/tmp/tmpq/stage-1.mlmodelc/model.mil:2465:12",
    " @ CreateBnnsGraphProgramFromMIL",
    "E5RT: Error(s) occurred compiling MIL to BNNS graph:",
    "[CreateBnnsGraphProgramFromMIL]: Failed to determine convolution kernel at location at "
    "/var/folders/8j/T/sd3coreml-coreml-4242-ab/tmp/tmpq/stage-1.mlmodelc/model.mil:2465:12",
    " (9)",
    "Deconv stride should be 4 on both width and height axis",
    "Deconv stride should be 4 on both width and height axis",
    "Deconv stride should be 4 on both width and height axis",
]
# FluidAudio#294, on a model that loads. The text as stored here ends at `E5RT: unordered_map::at`;
# the rest of that line follows #2450's `E5RT: <message> (<code>)`.
STL_EXCEPTION = [
    "BNNS Graph Compile: Function main has tensor conv0_first as both an input and output. ",
    "Inputs and outputs must be distinct, please add an explicit identity op.",
    "/private/var/mobile/Containers/Data/Application/.../mimi_decoder_v2.mlmodelc/model.mil:4:4",
    "",
    "E5RT encountered an STL exception. msg = unordered_map::at: key not found.",
    "E5RT: unordered_map::at: key not found. (11)",
]
ANE_COMPILE_FAILED = (
    "2026-11-30 10:12:03.512 python[4242:1a2b] [espresso] [Espresso::ANERuntimeEngine::__forward_segment 0] "
    "ANECCompile() FAILED (11)"
)
NO_MEMORY_OBJECT = "E5RT: No memory object bound to port"

# A stage that loads and runs on the Neural Engine, with CPU-side E5RT notes at every load.
WORKING_WITH_BNNS_NOTES = [
    phase(COMPILE),
    phase(CPU_AND_NE_LOAD),
    *BNNS_GRAPH_ERROR,
    phase(CPU_AND_NE_PREDICT),
    phase(CPU_ONLY),
    phase(STEPS),
    *BNNS_GRAPH_ERROR,
    *STL_EXCEPTION,
    phase(PLAN),
]
# The Neural Engine compile fails at the first load, and more than the tail's twenty lines follow.
ANE_FAILURE_AT_FIRST_LOAD = [
    phase(COMPILE),
    phase(CPU_AND_NE_LOAD),
    ANE_COMPILE_FAILED,
    phase(CPU_AND_NE_PREDICT),
    *BNNS_GRAPH_ERROR * 3,
    phase(CPU_ONLY),
    phase(STEPS),
    *(ANE_COMPILE_FAILED.replace("03.512", f"4{second}.007") for second in (1, 2)),  # one line, twice
    *(f"step {number} done" for number in range(25)),
    phase(PLAN),
]
# An E5RT line this reading cannot place: Neural Engine trouble on large activations, or not.
UNKNOWN_E5RT = [phase(COMPILE), phase(CPU_AND_NE_LOAD), phase(CPU_AND_NE_PREDICT), NO_MEMORY_OBJECT, phase(CPU_ONLY)]
# Under CPU_ONLY, where no line says anything about the Neural Engine.
CPU_ONLY_E5RT = [
    phase(COMPILE), phase(CPU_AND_NE_LOAD), phase(CPU_AND_NE_PREDICT), phase(CPU_ONLY), NO_MEMORY_OBJECT,
    ANE_COMPILE_FAILED, phase(STEPS), phase(PLAN),
]  # fmt: skip
CLEAN = [phase(name) for name in (COMPILE, CPU_AND_NE_LOAD, CPU_AND_NE_PREDICT, CPU_ONLY, STEPS, PLAN)]
# The compute plan's call, after the runs, is not a run: a Neural Engine failure there needs a look.
PLAN_ONLY_FAILURE = [*CLEAN, "E5RT encountered an STL exception. msg = MILCompilerForANE error: failed to compile."]




@pytest.mark.parametrize(
    "line, kind",
    [
        (ANE_COMPILE_FAILED, NEURAL_ENGINE_FAILURE),
        ("E5RT encountered an STL exception. msg = MILCompilerForANE error: failed to compile ANE model using ANEF.",
         NEURAL_ENGINE_FAILURE),  # the Neural Engine's compiler named inside an E5RT line
        ('ANE Evaluation Error = Error Domain=com.apple.appleneuralengine Code=8 "processRequest:model:qos:qIndex:'
         'modelStringID:options:error:: ANEProgramProcessRequestDirect() Failed with status=0x16"',
         NEURAL_ENGINE_FAILURE),
        ("E5RT: Error(s) occurred compiling MIL to BNNS graph:", CPU_SIDE_E5RT),
        ("E5RT encountered an STL exception. msg = unordered_map::at: key not found.", CPU_SIDE_E5RT),
        (NO_MEMORY_OBJECT, UNEXPLAINED_E5RT),
        ("E5RT: unordered_map::at: key not found. (11)", UNEXPLAINED_E5RT),  # with no STL exception before it
        ("Deconv stride should be 4 on both width and height axis", None),
    ],
)  # fmt: skip
def test_each_line_is_read_by_what_it_says(line, kind):
    assert line_kind(line) == kind


def test_an_stl_exceptions_repetition_by_e5rt_is_a_note_too():
    lines = [line for line in classified_stderr(STL_EXCEPTION)["lines"] if line["kind"] is not None]
    assert [(line["line"], line["kind"]) for line in lines] == [
        ("E5RT encountered an STL exception. msg = unordered_map::at: key not found.", CPU_SIDE_E5RT),
        ("E5RT: unordered_map::at: key not found. (11)", CPU_SIDE_E5RT),
    ]


@pytest.mark.parametrize(
    "recorded, timings, expected, why",
    [
        (WORKING_WITH_BNNS_NOTES, {}, "neural_engine", "95.0% on the Neural Engine"),
        (ANE_FAILURE_AT_FIRST_LOAD, {}, "failed", "Neural Engine failure during cpu_and_ne_load: "
         "[espresso] [Espresso::ANERuntimeEngine::__forward_segment 0] ANECCompile() FAILED (11)"),
        (UNKNOWN_E5RT, {}, "unknown", f"needs a look: an E5RT line during cpu_and_ne_predict: {NO_MEMORY_OBJECT}"),
        (UNKNOWN_E5RT, {"ne_pct": 50.0}, "unknown", "needs a look"),  # never partial or neural_engine
        (UNKNOWN_E5RT, {"cpu_only_predict_s": 0.1}, "fell_back", "CPU_AND_NE only 1.00x"),  # measured, worse
        (CPU_ONLY_E5RT, {}, "neural_engine", "95.0% on the Neural Engine"),
        (CLEAN, {}, "neural_engine", "95.0% on the Neural Engine, 5.00x faster than CPU_ONLY"),
        (CLEAN, {"ne_pct": 60.0}, "partial", "60.0% of the ops' cost"),
        (PLAN_ONLY_FAILURE, {}, "unknown", "needs a look: a Neural Engine failure outside a run during plan"),
    ],
)  # fmt: skip
def test_recorded_stderr_decides_by_phase(recorded, timings, expected, why):
    judged, reason = verdict(profile(recorded, **timings))
    assert judged == expected and reason.startswith(why)


def test_a_dead_child_is_failed_in_the_phase_it_died_in():
    died = profile(ANE_FAILURE_AT_FIRST_LOAD[:3], failed="signal SIGKILL after 3.0 s")
    assert verdict(died) == ("failed", "signal SIGKILL after 3.0 s during cpu_and_ne_load")
    assert verdict({"failed": "no answer within 1800 s"}) == ("failed", "no answer within 1800 s")


def test_lines_are_kept_once_per_phase_with_their_counts():
    record = classified_stderr(ANE_FAILURE_AT_FIRST_LOAD)
    assert record["phases"] == ["start", COMPILE, CPU_AND_NE_LOAD, CPU_AND_NE_PREDICT, CPU_ONLY, STEPS, PLAN]
    failures = [(line["phase"], line["count"]) for line in record["lines"] if line["kind"] == NEURAL_ENGINE_FAILURE]
    assert failures == [(CPU_AND_NE_LOAD, 1), (STEPS, 2)]
    notes = {line["line"]: line["count"] for line in record["lines"] if line["phase"] == CPU_AND_NE_PREDICT}
    assert notes["E5RT: Error(s) occurred compiling MIL to BNNS graph:"] == 3
    assert notes["Deconv stride should be 4 on both width and height axis"] == 9


def test_the_record_keeps_the_deciding_phases_lines():
    recorded = profile(ANE_FAILURE_AT_FIRST_LOAD)
    kept = with_stderr(recorded, recorded["stderr"], ["step 24 done"])
    assert kept["deciding_phase"]["phase"] == CPU_AND_NE_LOAD
    assert [line["line"] for line in kept["deciding_phase"]["lines"]] == [
        "[espresso] [Espresso::ANERuntimeEngine::__forward_segment 0] ANECCompile() FAILED (11)"
    ]
    assert "deciding_phase" not in with_stderr(profile(WORKING_WITH_BNNS_NOTES), classified_stderr(CLEAN), [])


def test_the_record_stays_bounded_and_a_later_phase_keeps_its_lines():
    flood = [phase(CPU_AND_NE_LOAD), *(f"E5RT: BNNS note {number}" for number in range(5000)),
             *(f"plain {number}" for number in range(5000)), phase(STEPS), ANE_COMPILE_FAILED]  # fmt: skip
    record = StderrRecord(distinct_per_phase=DISTINCT_LINES_PER_PHASE)
    for line in flood:
        record.feed(line)
    kept = record.record()
    assert len(kept["lines"]) == 2 * DISTINCT_LINES_PER_PHASE + 1
    assert kept["dropped"] == {CPU_AND_NE_LOAD: 10000 - 2 * DISTINCT_LINES_PER_PHASE}
    assert verdict(profile(CLEAN) | {"stderr": kept})[0] == "failed"


def test_a_failure_that_scrolled_out_of_the_tail_still_decides(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    record = StderrRecord()
    kwargs = {"lines": ANE_FAILURE_AT_FIRST_LOAD}
    result = run_isolated("isolated_children:print_to_stderr", kwargs, timeout_s=60, on_stderr_line=record.feed)
    assert result.ok and len(result.stderr) == STDERR_LINES
    assert not any("ANECCompile" in line for line in result.stderr)
    assert verdict(profile([]) | {"stderr": record.record()})[0] == "failed"


def test_unknown_ranks_between_fell_back_and_partial():
    assert VERDICTS.index("fell_back") < VERDICTS.index("unknown") < VERDICTS.index("partial")
    assert worst(["neural_engine", "unknown", "partial"]) == "unknown"
    assert worst(["unknown", "fell_back"]) == "fell_back"


def test_the_summary_takes_unknown_as_a_verdict_not_as_a_reason_for_no_figures():
    from sd3coreml.sweep.summary import combined_device_figures, weight_limit

    measured = {"verdict": "neural_engine", "neural_engine_pct": 95.0, "first_load_s": 2.0, "predict_s": 0.5,
                "cpu_only_predict_s": 2.0, "step_s": 1.0}  # fmt: skip
    combined = combined_device_figures([measured, {**measured, "verdict": "unknown"}])
    assert combined["verdict"] == "unknown" and combined["step_s"] == 2.0
    assert weight_limit(2**31, 2**30, {"verdict": "unknown"}) == "Mac: unknown"
