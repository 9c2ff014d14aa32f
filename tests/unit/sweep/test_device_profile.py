"""On-device measurement: the decisions, on recorded data.

Core ML's compute plan, loads and predictions run only on macOS; nothing here stands in for
them. What a Mac records is judged by plain functions (device_verdict.py), tested here.
"""

import os
from datetime import datetime
from types import SimpleNamespace

import pytest
from harness import recorded_profile as profile

from sd3coreml.sweep.device_profile import (
    device_columns,
    unified_log_command,
    unified_log_entries,
    unified_log_findings,
    unified_log_record,
)
from sd3coreml.sweep.device_verdict import (
    CPU_AND_NE_LOAD,
    PlacedOp,
    VerdictThresholds,
    phase_announcement,
    placement,
    verdict,
    walk_operations,
    worst,
)

# Recorded from a compressed stage's plan: weights as const/constexpr ops, one op without a device.
RECORDED_OPS = [
    PlacedOp("const", "cpu", 0.0),
    PlacedOp("constexpr_blockwise_shift_scale", "cpu", 0.0),
    PlacedOp("linear", "neural_engine", 0.5),
    PlacedOp("layer_norm", "neural_engine", 0.2),
    PlacedOp("scaled_dot_product_attention", "gpu", 0.1),
    PlacedOp("gather", "cpu", 0.2),
    PlacedOp("cast", None, None),
]


def test_placement_leaves_weights_out_counts_missing_devices_and_weights_by_cost():
    result = placement(RECORDED_OPS)
    assert result["ops"] == {"neural_engine": 2, "gpu": 1, "cpu": 1, "no_device": 1, "total": 5}
    # One op has no cost: the plan's costs are not whole, so ops are counted instead.
    assert result["weighted_by"] == "count" and result["pct"]["neural_engine"] == pytest.approx(40.0)
    costed = placement([op for op in RECORDED_OPS if op.cost is not None])
    assert costed["weighted_by"] == "cost" and costed["pct"]["neural_engine"] == pytest.approx(70.0)
    assert costed["pct"]["cpu"] == pytest.approx(20.0) and costed["ops"]["total"] == 4


def test_walking_a_plan_reaches_ops_in_nested_blocks():
    inner = SimpleNamespace(operations=[SimpleNamespace(operator_name="add", blocks=[])])
    loop = SimpleNamespace(operator_name="while_loop", blocks=[inner, inner])
    block = SimpleNamespace(operations=[SimpleNamespace(operator_name="linear", blocks=[]), loop])
    assert [op.operator_name for op in walk_operations(block)] == ["linear", "while_loop", "add", "add"]




THRESHOLDS = VerdictThresholds(neural_engine_min_pct=90.0, min_speedup=1.5)


@pytest.mark.parametrize(
    "recorded, expected",
    [
        (profile(), "neural_engine"),
        (profile(ne_pct=90.0), "neural_engine"),  # the share's boundary is inclusive
        (profile(ne_pct=89.9), "partial"),
        (profile(cpu_only_predict_s=0.15), "neural_engine"),  # exactly 1.5x
        (profile(cpu_only_predict_s=0.149), "fell_back"),
        (profile(ne_pct=50.0, cpu_only_predict_s=0.1), "fell_back"),  # timing outranks the plan's wish
        (profile(stderr=[phase_announcement(CPU_AND_NE_LOAD), "ANECCompile() FAILED (11)"]), "failed"),
        ({"failed": "signal SIGKILL after 3.0 s"}, "failed"),
        ({"failed": "no answer within 1800 s"}, "failed"),
    ],
)
def test_every_verdict_boundary(recorded, expected):
    assert verdict(recorded, THRESHOLDS)[0] == expected


def test_a_layout_takes_its_worst_stages_verdict():
    assert worst(["neural_engine", "partial", "neural_engine"]) == "partial"
    assert worst(["partial", "failed", "fell_back"]) == "failed"


def test_columns_give_verdict_share_timings_and_the_apps_step_cost():
    columns = device_columns(profile(ne_pct=92.5), THRESHOLDS)
    assert columns == {
        "verdict": "neural_engine",
        "neural_engine_pct": 92.5,
        "first_load_s": 4.0,
        "predict_s": 0.1,
        "cpu_only_predict_s": 0.5,
        "step_s": pytest.approx(0.61),
    }
    dead = device_columns({"failed": "signal SIGKILL after 3.0 s"}, THRESHOLDS)
    assert dead["verdict"] == "failed" and dead["step_s"] == "failed: signal SIGKILL after 3.0 s"
    assert device_columns({"unavailable": "needs macOS 15"})["verdict"] == "needs macOS 15"


# `log show --style compact` output: the header and entry format as recorded on Macs (other tools' tests
# of the same command); the Neural Engine's messages quoted from issues (rustane#11, coreai-models#138,
# stable-diffusion-webui#13933). No recording of this project's child exists yet.
RECORDED_UNIFIED_LOG = """Timestamp               Ty Process[PID:TID]
2026-11-30 10:12:01.104 Df python3.11[4242:1a2b3c] [com.apple.coreml:loading] Loading model stage-1.mlmodelc
2026-11-30 10:12:02.881 E  ANECompilerService[312:5a8b53a] [com.apple.ane:compiler] _ANECompiler : ANECCompile() FAILED
2026-11-30 10:12:02.882 E  ANECompilerService[312:5a8b53a] [com.apple.ane:compiler] _ANECompiler : ANECCompile() FAILED
2026-11-30 10:12:02.990 E  aned[298:5a8b600] [com.apple.ane:daemon] compile failed: err=(
    "Compiler internal error: failed create split by input channel, graph is changed"
  )
2026-11-30 10:12:03.250 E  python3.11[4242:1a2b3c] [com.apple.espresso:default] E5RT: Error(s) occurred compiling MIL to BNNS graph:
2026-11-30 10:12:04.001 Df python3.11[4242:1a2b3c] [com.apple.coreml:prediction] ANE Evaluation Error = processRequest:: ANEProgramProcessRequestDirect() Failed with status=0x16
"""


def test_the_unified_log_search_is_bounded_by_the_childs_start_and_sees_the_compiler():
    command = unified_log_command(4242, datetime(2026, 11, 30, 10, 12, 0, 987654))
    assert command == [
        "log", "show", "--style", "compact", "--start", "2026-11-30 10:12:00", "--predicate",
        'processID == 4242 OR process == "ANECompilerService" OR process == "aned"',
    ]  # fmt: skip


def test_the_unified_logs_entries_are_read_per_process_with_counts():
    entries = unified_log_entries(RECORDED_UNIFIED_LOG)
    assert [(entry["process"], entry["pid"], entry["type"]) for entry in entries] == [
        ("python3.11", 4242, "Df"), ("ANECompilerService", 312, "E"), ("ANECompilerService", 312, "E"),
        ("aned", 298, "E"), ("python3.11", 4242, "E"), ("python3.11", 4242, "Df"),
    ]  # fmt: skip
    assert entries[3]["message"].splitlines()[1].strip().startswith('"Compiler internal error')
    findings = unified_log_findings(entries)
    assert findings["entries"] == {"python3.11": 3, "ANECompilerService": 2, "aned": 1}
    assert [(line["process"], line["kind"], line["count"]) for line in findings["lines"]] == [
        ("ANECompilerService", "neural_engine_failure", 2),
        ("python3.11", "cpu_side_e5rt", 1),
        ("python3.11", "neural_engine_failure", 1),
    ]


def test_the_unified_log_is_read_through_log_show_and_stays_out_of_the_verdict(tmp_path, monkeypatch):
    fake = tmp_path / "log"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/argv"\ncat <<"EOF"\n{RECORDED_UNIFIED_LOG}EOF\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    started = datetime(2026, 11, 30, 10, 12, 0).timestamp()
    record = unified_log_record(4242, started)
    command = unified_log_command(4242, datetime.fromtimestamp(started))
    assert ["log", *(tmp_path / "argv").read_text().splitlines()] == command
    assert "error" not in record and record["entries"]["ANECompilerService"] == 2
    # Its Neural Engine failures are kept for a look, not counted against the stage.
    assert verdict(profile() | {"unified_log_unverified": record}, THRESHOLDS)[0] == "neural_engine"
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert unified_log_record(4242, started)["error"].startswith("FileNotFoundError")
