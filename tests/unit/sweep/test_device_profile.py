"""On-device measurement: the decisions, on recorded data, and the one-line refusal off macOS.

Core ML's compute plan, loads and predictions run only on macOS; nothing here stands in for
them. What a Mac records is judged by plain functions (device_verdict.py), tested here.
"""

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from sd3coreml.sweep.device_profile import device_columns, zero_inputs
from sd3coreml.sweep.device_verdict import (
    PlacedOp,
    VerdictThresholds,
    failure_markers,
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
# What a Neural Engine compile failure leaves in a child's stderr (as reported in coremltools#2758 and others).
RECORDED_STDERR = [
    "2026-11-30 10:12:01.1 python[4242:1234] loading the model",
    "2026-11-30 10:12:03.5 python[4242:1234] [espresso] [Espresso::ANERuntimeEngine::__forward_segment 0] "
    "ANECCompile() FAILED (11)",
    "E5RT encountered an STL exception. msg = MILCompilerForANE error: failed to compile ANE model using ANEF.",
    "python[4242] Error: MaxLiveInLiveOutExceeded",
    "prediction done",
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


def test_markers_are_found_in_recorded_stderr():
    assert failure_markers(RECORDED_STDERR) == RECORDED_STDERR[1:4]
    assert failure_markers(["loading the model", "prediction done"]) == []


def profile(ne_pct=95.0, predict_s=0.1, cpu_only_predict_s=0.5, markers=()):
    return {
        "placement": {"pct": {"neural_engine": ne_pct, "gpu": 0.0, "cpu": 100 - ne_pct}, "weighted_by": "cost"},
        "first_load_s": 4.0,
        "predict_s": predict_s,
        "cpu_only_predict_s": cpu_only_predict_s,
        "step": {"load_s": 0.5, "predict_s": predict_s, "unload_s": 0.01},
        "markers": list(markers),
    }


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
        (profile(markers=[RECORDED_STDERR[1]]), "failed"),
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


@pytest.mark.skipif(sys.platform == "darwin", reason="the refusal is what other hosts do")
def test_off_macos_the_step_refuses_in_one_line_and_writes_nothing(demo_workdir, tmp_path):
    package = next((demo_workdir / "results/demo/mmdit").rglob("input.fp16.mlpackage"))
    out = tmp_path / "profile.json"
    command = [sys.executable, "-m", "sd3coreml", "profile-on-device", "--package", str(package), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {package}: on-device measurement needs a Mac")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_inputs_follow_the_packages_declared_shapes_and_dtypes(demo_workdir):
    package = next((demo_workdir / "results/demo/mmdit").rglob("blocks0-1.fp16.mlpackage"))
    inputs = zero_inputs(package)
    # The demo's Stage1 at latent 16x16: 64 image tokens, 154 text tokens, width 64, fp32 inputs.
    assert {name: (array.shape, array.dtype) for name, array in inputs.items()} == {
        "latent_image_embeddings": ((1, 64, 64), np.float32),
        "token_level_text_embeddings": ((1, 154, 64), np.float32),
        "modulation_inputs": ((1, 64), np.float32),
    }
    assert not any(array.any() for array in inputs.values())
