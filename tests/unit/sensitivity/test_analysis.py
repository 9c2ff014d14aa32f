"""Sensitivity records of one joint block, on the tiny synthetic transformer and a calibration of
random inputs of the block's shapes (the chain that makes real ones runs in tests/demo)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sd3coreml.compress.allocation import Budget, allocate
from sd3coreml.errors import PipelineError
from sd3coreml.inputs.checkpoint import load_transformer_config
from sd3coreml.inputs.geometry import MMDiTShape
from sd3coreml.sensitivity.analysis import analyse_piece, palette_bytes
from sd3coreml.sensitivity.budget import curves_of, recipe_from_budget
from sd3coreml.sensitivity.calibration import DESCRIPTION, FORMAT
from sd3coreml.synthetic.checkpoints import write_synthetic_transformer

BLOCK = "block2"
PLANTED = "transformer_blocks.2.ff.net.0.proj.weight"
TWIN = "transformer_blocks.2.ff_context.net.0.proj.weight"
# 8-bit palettes cost most of the k-means time (0.8 s a weight here) and add nothing to these checks.
WIDTHS = [1, 2, 4, 6]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(weights, config, calibration folder) of the tiny preset, with random block inputs."""
    root = tmp_path_factory.mktemp("tiny")
    weights, config = root / "tiny.safetensors", root / "tiny.json"
    write_synthetic_transformer("tiny", 4, weights, config)
    shape = MMDiTShape.from_config(load_transformer_config(config), 16, 16)
    calibration = root / "calibration"
    calibration.mkdir()
    generator = torch.Generator().manual_seed(0)
    samples = 4
    inputs = {
        "image": torch.randn(samples, shape.image_tokens, shape.width, generator=generator),
        "text": torch.randn(samples, shape.text_tokens, shape.width, generator=generator),
        "modulation": torch.randn(samples, shape.width, generator=generator),
    }
    save_file(inputs, str(calibration / f"{BLOCK}.safetensors"))
    description = {"format": FORMAT, "latent": [16, 16], "prompts": ["random"], "steps": samples, "seed": 0}
    (calibration / DESCRIPTION).write_text(json.dumps(description))
    return weights, config, calibration


def analyse(weights, config, calibration, probes=(4, 2)):
    return analyse_piece(weights, config, calibration, BLOCK, WIDTHS, 10_000, list(probes), 2, 1)


@pytest.fixture(scope="module")
def record(tiny):
    """On one torch thread, as the job runs with sensitivity.threads 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return analyse(*tiny)
    finally:
        torch.set_num_threads(threads)


def planted(tiny, tmp_path):
    """The tiny checkpoint with four rows of one weight scaled up thirtyfold: outliers its palettes must span."""
    weights, config, calibration = tiny
    tensors = load_file(str(weights))
    tensors[PLANTED][:4] *= 30
    path = tmp_path / "planted.safetensors"
    save_file(tensors, str(path))
    return path


def test_every_large_linear_gets_a_curve_falling_with_width_and_its_palette_bytes(record):
    assert PLANTED in record["weights"] and len(record["weights"]) == 6
    for weight in record["weights"].values():
        effects = [weight["curve"][str(width)]["effect"] for width in WIDTHS]
        assert effects == sorted(effects, reverse=True) and effects[-1] > 0
        assert weight["curve"]["fp16"] == {"bytes": 2 * weight["values"], "own_nsr": 0.0, "effect": 0.0}
        assert weight["curve"]["4"]["bytes"] == palette_bytes(weight["values"], 4) == weight["values"] // 2 + 32
        assert weight["measured"]["4"] == weight["curve"]["4"]["effect"]  # the transfer's own probe


def test_the_prediction_is_near_the_measurement_at_the_check_width(record):
    for weight in record["weights"].values():
        predicted, measured = weight["curve"]["2"]["effect"], weight["measured"]["2"]
        assert 0.5 < predicted / measured < 2


def test_a_planted_sensitive_weight_gets_more_bits_than_its_twin_and_than_before(tiny, record, tmp_path):
    weights, config, calibration = tiny
    plain = curves_of([record])
    sensitive = curves_of([analyse(planted(tiny, tmp_path), config, calibration)])
    budget = Budget(bits_per_weight=3)
    before, after = allocate(plain, budget), allocate(sensitive, budget)
    assert after[PLANTED] > after[TWIN]
    assert after[PLANTED] > before[PLANTED]


def test_the_job_repeats_the_record_with_another_hash_seed_and_omp_thread_count(tiny, record, tmp_path):
    weights, config, calibration = tiny
    out = tmp_path / "block2.json"
    command = [sys.executable, "-m", "sd3coreml", "analyse-weights", "--weights", str(weights), "--config", str(config),
               "--calibration", str(calibration), "--piece", BLOCK, "--widths", *map(str, WIDTHS), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONHASHSEED": "5"}
    subprocess.run(command, check=True, capture_output=True, env=env)
    assert json.loads(out.read_text()) == record


def test_a_weight_holding_inf_or_nan_is_refused_by_name(tiny, tmp_path):
    weights, config, calibration = tiny
    tensors = load_file(str(weights))
    tensors[TWIN][3, 5] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(PipelineError, match=rf"tensor {TWIN} holds inf or NaN"):
        analyse(path, config, calibration)


def test_bad_settings_are_refused_in_one_line(tiny):
    weights, config, calibration = tiny
    with pytest.raises(PipelineError, match="min_values is 5000"):
        analyse_piece(weights, config, calibration, BLOCK, WIDTHS, 5000, [4], 2, 1)
    with pytest.raises(PipelineError, match="probe_widths holds 3"):
        analyse_piece(weights, config, calibration, BLOCK, WIDTHS, 10_000, [3], 2, 1)
    with pytest.raises(PipelineError, match="block9"):
        analyse_piece(weights, config, calibration, "block9", WIDTHS, 10_000, [4], 2, 1)
    with pytest.raises(PipelineError, match="input.safetensors: missing"):
        analyse_piece(weights, config, calibration, "input", WIDTHS, 10_000, [4], 2, 1)


def test_a_budget_gives_a_recipe_within_it_and_a_report_beside_the_threshold_rule(record, tmp_path):
    path = tmp_path / "block2.json"
    path.write_text(json.dumps(record))
    recipes, report = recipe_from_budget([path], "bits_per_weight=3")
    assert list(recipes) == [""]  # the transformer's pieces: one recipe
    recipe = recipes[""]
    assert report["recipe"]["bits_per_weight"] <= 3
    assert report["per_layer_threshold_rule"]["bytes"] <= report["recipe"]["bytes"]
    assert report["recipe"]["predicted_effect"] <= report["per_layer_threshold_rule"]["predicted_effect"]
    widths = {entry["nbits"] for entry in recipe["weights"].values() if entry != "fp16"}
    assert len(widths) > 1  # a mix, unlike any uniform mode
    _, floor = recipe_from_budget([path], "min_snr_db=30")
    assert floor["recipe"]["predicted_snr_db"] >= 30
    with pytest.raises(PipelineError, match="KIND=VALUE"):
        recipe_from_budget([path], "bits=3")
    assert np.isclose(report["uniform"]["4"]["bits_per_weight"], 4, atol=0.1)


def test_the_threshold_rule_recipe_holds_the_widths_the_report_predicts_for_it(record, tmp_path):
    path = tmp_path / "block2.json"
    path.write_text(json.dumps(record))
    allocated, report = recipe_from_budget([path], "bits_per_weight=3")
    by_threshold, same_report = recipe_from_budget([path], "bits_per_weight=3", "per_layer_threshold")
    assert same_report == report
    histogram = {}
    for entry in by_threshold[""]["weights"].values():
        width = "fp16" if entry == "fp16" else str(entry["nbits"])
        histogram[width] = histogram.get(width, 0) + 1
    assert histogram == report["per_layer_threshold_rule"]["widths"]
