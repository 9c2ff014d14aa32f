"""The stage-layout sweep: its plan from config/sweeps.yaml, its device figures and weight-limit flags."""

from types import SimpleNamespace

import pytest
import yaml
from harness import REPO

import sd3coreml.sweep.plan
from sd3coreml.compress.settings import CompressionSetting
from sd3coreml.errors import PipelineError
from sd3coreml.pipeline.artifacts import block_range_name
from sd3coreml.sweep.device_verdict import DEVICE_COLUMNS
from sd3coreml.sweep.plan import plan_sweep

INT8 = {"mode": "linear_symmetric", "nbits": 8, "granularity": "per_channel"}
INT4 = {"mode": "linear_symmetric", "nbits": 4, "granularity": "per_block", "block_size": 32}
MODELS = {"4step": SimpleNamespace(shape=SimpleNamespace(depth=5))}


def sweep_plan(tmp_path, entry, conversion_target="iOS18"):
    path = tmp_path / "sweeps.yaml"
    path.write_text(yaml.safe_dump({"mine": entry}))
    config = {"sweep": {"name": "mine", "file": str(path)}, "conversion_target": conversion_target}
    return plan_sweep(config, MODELS)


def test_layouts_are_named_by_their_sizes(tmp_path):
    plan = sweep_plan(tmp_path, {"model": "4step", "layouts": [[1, 1, 1, 1, 1], [2, 3]], "compression": {"int8": INT8}})
    assert [layout.name for layout in plan.layouts] == ["5x1", "2-3"]
    assert [layout.stage_count for layout in plan.layouts] == [6, 3]
    assert block_range_name(plan.layouts[1].ranges[-1]) == "blocks2-5_head"


def test_a_mix_picks_settings_per_stage_and_counts_back_from_the_head(tmp_path, monkeypatch):
    checked = []
    check = sd3coreml.sweep.plan.checked_setting
    monkeypatch.setattr(
        "sd3coreml.sweep.plan.checked_setting",
        lambda settings, key, target: (checked.append(key), check(settings, key, target))[1],
    )
    mix = {"default": INT4, "stages": {0: INT8, -1: INT8}}
    plan = sweep_plan(tmp_path, {"model": "4step", "layouts": [[2, 3]], "compression": {"mix": mix}})
    mode = plan.modes[0]
    int8, int4 = CompressionSetting.from_config(INT8), CompressionSetting.from_config(INT4)
    assert [mode.for_stage(index, 3) for index in range(3)] == [int8, int4, int8]
    assert [mode.for_stage(index, 4) for index in range(4)] == [int8, int4, int4, int8]
    # Every settings block went through the compression check, under its own key.
    assert sorted(checked) == sorted(f"{tmp_path}/sweeps.yaml: mine.compression.mix{part}" for part in (
        ".default", ".stages.0", ".stages.-1"))  # fmt: skip


def test_a_mode_the_conversion_target_cannot_run_is_refused_naming_its_key(tmp_path):
    mix = {"default": INT8, "stages": {-1: INT4}}
    with pytest.raises(PipelineError) as error:
        sweep_plan(tmp_path, {"model": "4step", "layouts": [[5]], "compression": {"mix": mix}}, "iOS17")
    assert "mine.compression.mix.stages.-1' (linear_symmetric, 4-bit) needs conversion_target iOS18" in str(error.value)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"model": "2step", "layouts": [[5]], "compression": {"int8": INT8}}, "mine.model is '2step'"),
        ({"model": "4step", "layouts": [[2, 2]], "compression": {"int8": INT8}}, "mine.layouts[0]' sums to 4"),
        ({"model": "4step", "layouts": [[2, 3], [2, 3]], "compression": {"int8": INT8}}, "names one layout twice"),
        ({"model": "4step", "layouts": [[5]], "compression": {}}, "mine.compression: give at least one mode"),
        (
            {"model": "4step", "layouts": [[5], [1, 4]], "compression": {"m": {"default": INT8, "stages": {2: INT4}}}},
            "mine.compression.m.stages.2: stage index must be an integer from -2 to 1",
        ),
    ],
)
def test_a_bad_sweep_is_refused_naming_its_key(tmp_path, entry, message):
    with pytest.raises(PipelineError, match=None) as error:
        sweep_plan(tmp_path, entry)
    assert message in str(error.value)


def test_an_unknown_sweep_name_lists_the_known_ones(tmp_path):
    config = {"sweep": {"name": "nope", "file": str(REPO / "config" / "sweeps.yaml")}}
    with pytest.raises(PipelineError, match="'sweep.name' is 'nope'.*demo"):
        plan_sweep(config, MODELS)


def test_a_layouts_device_figures_combine_its_stages():
    from sd3coreml.sweep.summary import combined_device_figures

    measured = {"verdict": "neural_engine", "neural_engine_pct": 95.0, "first_load_s": 2.0, "predict_s": 0.5,
                "cpu_only_predict_s": 2.0, "step_s": 1.0}  # fmt: skip
    partial = {**measured, "verdict": "partial", "neural_engine_pct": 60.0}
    assert combined_device_figures([measured, partial]) == {
        "verdict": "partial", "neural_engine_pct": 60.0, "first_load_s": 4.0, "predict_s": 1.0,
        "cpu_only_predict_s": 4.0, "step_s": 2.0,
    }  # fmt: skip
    dead = {**measured, "verdict": "failed", "step_s": "failed: signal SIGKILL after 3.0 s"}
    combined = combined_device_figures([measured, dead])
    assert combined["verdict"] == "failed" and combined["step_s"] == "failed: signal SIGKILL after 3.0 s"
    assert combined_device_figures([dict.fromkeys(DEVICE_COLUMNS, "needs macOS 15")])["verdict"] == "needs macOS 15"


def test_stages_over_the_weight_limit_are_flagged_as_a_heuristic_until_a_mac_measures_them():
    from sd3coreml.sweep.summary import OVER_LIMIT, UNDER_LIMIT, row_weight_limit, weight_limit

    no_mac = {"verdict": "needs a Mac"}
    assert weight_limit(2**30 + 1, 2**30, no_mac) == OVER_LIMIT == "over (heuristic)"
    assert weight_limit(2**30, 2**30, no_mac) == UNDER_LIMIT
    assert weight_limit(2**31, 2**30, {"verdict": "neural_engine"}) == "Mac: neural_engine"
    stages = [{"stage": 0, "weight_limit": UNDER_LIMIT}, {"stage": 2, "weight_limit": OVER_LIMIT}]
    assert row_weight_limit(stages) == "1 over (heuristic): 2"
