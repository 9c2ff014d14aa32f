"""Recipes made from budgets, on a copy of the session build: the 4-step packages folder with
`compression.mmdit: {mode: recipe, budget: {bits_per_weight: 4}}` and the text encoders' own budget
(issue 26's chains, end to end); the Conditioning with int8 weights and 8-bit activations and Stage1
with the budget's recipe and 8-bit activations (issue 27's W8A8 composed with both kinds)."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from harness import copy_of_build, planned_jobs, snakemake, write_config

from sd3coreml.checksums import file_sha256, tree_sha256
from sd3coreml.compress.recipes import Recipe
from sd3coreml.compress.weights import const_pattern
from sd3coreml.convert.package import load_package, load_program
from sd3coreml.inputs.checkpoint import CONDITIONING_PREFIXES

BUDGET = {"mode": "recipe", "budget": {"bits_per_weight": 4}, "min_psnr_db": 26}
TEXT_BUDGET = {"mode": "recipe", "budget": {"bits_per_weight": 6}, "min_psnr_db": 25}
W8A8 = {"mode": "linear_symmetric", "nbits": 8, "granularity": "per_channel", "activations": "int8"}
A8_OVERRIDES = {"MultiModalDiffusionTransformerConditioning": W8A8,
                "MultiModalDiffusionTransformerStage1": {**BUDGET, "activations": "int8"}}  # fmt: skip
FOLDER = "results/demo/coremlsd3_4step_packages"


@pytest.fixture(scope="module")
def recipe_build(demo_build, tmp_path_factory):
    workdir = copy_of_build(demo_build, tmp_path_factory.mktemp("recipe"))
    # A floor above the demo's all-8-bit figures (about 28-30 dB), so some ops keep fp16 activations.
    sensitivity = {**yaml.safe_load((workdir / "config" / "demo.yaml").read_text())["sensitivity"],
                   "activation_min_snr_db": 40}  # fmt: skip
    config = write_config(workdir, "recipe.yaml", sensitivity=sensitivity, compression={
        "mmdit": BUDGET, "text_encoders": TEXT_BUDGET, "overrides": A8_OVERRIDES})  # fmt: skip
    result = snakemake(workdir, "-c2", "coremlsd3_4step_packages", config=config)
    return workdir, planned_jobs(result)


def test_the_budget_plans_one_calibration_an_analysis_per_piece_one_recipe_and_its_packages(recipe_build):
    _, jobs = recipe_build
    rules = ("capture_calibration", "analyse_weights", "recipe_from_budget", "capture_text_calibration",
             "analyse_text_encoder", "text_recipe_from_budget", "compress_by_recipe", "activation_ranges",
             "quantize_activations_and_weights")  # fmt: skip
    assert {rule: jobs.get(rule) for rule in rules} == {
        "capture_calibration": 1, "analyse_weights": 5 + 2, "recipe_from_budget": 1, "capture_text_calibration": 1,
        "analyse_text_encoder": 2, "text_recipe_from_budget": 1, "compress_by_recipe": 3 + 2, "activation_ranges": 2,
        "quantize_activations_and_weights": 2}  # fmt: skip
    # Nothing of the int8 folder is converted again: the fp16 packages are the session build's.
    assert not {rule for rule in jobs if rule.startswith("convert")}


def recipe_of(workdir):
    return Recipe.read(next((workdir / "results/demo/recipes/4step").glob("recipe-bpw4.json")), "test")


def test_the_recipe_mixes_widths_within_the_budget_and_beats_the_threshold_rule(recipe_build):
    workdir, _ = recipe_build
    recipe = recipe_of(workdir)
    widths = {setting.nbits for _, setting in recipe.weights if setting.mode == "palettize"}
    assert len(widths) > 1, "a recipe counts only if it differs from every uniform mode"
    report = json.loads((workdir / "results/demo/recipes/4step/recipe-bpw4.report.json").read_text())
    assert report["recipe"]["bits_per_weight"] <= 4
    rule = report["per_layer_threshold_rule"]
    assert rule["bytes"] <= report["recipe"]["bytes"]
    assert report["recipe"]["predicted_effect"] <= rule["predicted_effect"]
    assert report["prediction_check"]["2"]["log_correlation"] > 0.8


def test_each_package_holds_the_palette_width_the_recipe_gives_each_weight(recipe_build):
    workdir, _ = recipe_build
    recipe = recipe_of(workdir)
    packages = sorted((workdir / "results/demo/mmdit/4step").rglob("*.recipe-bpw4*.mlpackage"))
    assert len(packages) == 4  # Stage0, Stage2 and Stage3; Stage1 with 8-bit activations too
    seen = set()
    for package in packages:
        for function in load_program(load_package(package)).functions.values():
            for op in function.find_ops(op_type="constexpr_lut_to_dense"):
                const = op.name.removesuffix("_palettized")
                (tensor,) = [name for name, _ in recipe.weights if const_pattern(name).fullmatch(const)]
                assert op.lut.val.size == 2 ** recipe.setting_for(tensor).nbits, tensor
                seen.add(tensor)
    # The Conditioning's weights are int8 here (an override): every other palettized weight is seen.
    conditioning = tuple(CONDITIONING_PREFIXES)
    assert seen == {name for name, setting in recipe.weights if setting.mode == "palettize"
                    and not name.startswith(conditioning)}  # fmt: skip


def test_the_folder_records_the_recipe_and_passes_its_checks(recipe_build):
    workdir, _ = recipe_build
    manifest = json.loads((workdir / FOLDER / "manifest.json").read_text())
    assert manifest["config"]["compression"]["mmdit"] == {**BUDGET, "min_psnr_db": 26.0}
    recipe_file = workdir / "results/demo/recipes/4step/recipe-bpw4.json"
    assert manifest["inputs"]["recipe recipe-bpw4"] == file_sha256(recipe_file)
    fidelity = json.loads((workdir / "results/demo/reports/coremlsd3_4step_packages/fidelity.json").read_text())
    assert fidelity["passed"] is True and fidelity["thresholds_db"]["recipe-bpw4"] == 26  # the recipe's own bar
    recipe_rows = [row for row in fidelity["outputs"] if ".recipe-bpw4." in row["package"]]
    assert len(recipe_rows) >= 5 and {row["min_psnr_db"] for row in recipe_rows} == {26}


def test_each_text_encoder_gets_its_part_of_one_budget_over_both(recipe_build):
    workdir, _ = recipe_build
    made = workdir / "results/demo/recipes/text_encoders/recipe-bpw6"
    report = json.loads((made / "report.json").read_text())
    assert report["recipe"]["bits_per_weight"] <= 6 and report["pieces"] == ["TextEncoder", "TextEncoder2"]
    manifest = json.loads((workdir / FOLDER / "manifest.json").read_text())
    widths = set()
    for entry in ("TextEncoder", "TextEncoder2"):
        recipe = Recipe.read(made / f"{entry}.json", "test")
        assert manifest["inputs"][f"recipe recipe-bpw6 {entry}"] == file_sha256(made / f"{entry}.json")
        (package,) = (workdir / "results/demo/text_encoders").rglob(f"{entry}.recipe-bpw6.mlpackage")
        luts = {op.name.removesuffix("_palettized"): op.lut.val.size
                for function in load_program(load_package(package)).functions.values()
                for op in function.find_ops(op_type="constexpr_lut_to_dense")}  # fmt: skip
        assert len(luts) == len(recipe.weights) == 4
        for tensor, setting in recipe.weights:
            (const,) = [name for name in luts if const_pattern(tensor).fullmatch(name)]
            assert luts[const] == 2**setting.nbits
            widths.add(setting.nbits)
    assert len(widths) > 1, "a recipe counts only if it differs from every uniform mode"
    fidelity = json.loads((workdir / "results/demo/reports/coremlsd3_4step_packages/fidelity.json").read_text())
    rows = [row for row in fidelity["outputs"] if ".recipe-bpw6." in row["package"]]
    assert len(rows) == 4 and {row["min_psnr_db"] for row in rows} == {25}


def test_the_calibration_repeats_with_another_hash_seed_and_omp_thread_count(recipe_build, tmp_path):
    workdir, _ = recipe_build
    (built,) = (workdir / "results/demo/calibration/4step").iterdir()
    description = json.loads((built / "calibration.json").read_text())
    again = tmp_path / "calibration"
    command = [sys.executable, "-m", "sd3coreml", "capture-calibration",
               "--weights", "results/demo/checkpoints/tiny-seed4.safetensors",
               "--config", "config/transformers/sd3-tiny.json", "--components", "results/demo/checkpoints/tiny-components-seed0",
               *[arg for prompt in description["prompts"] for arg in ("--prompt", prompt)],
               "--steps", str(description["steps"]), "--shift", str(description["shift"]), "--seed", "0",
               "--latent", "16", "16", "--out", str(again)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONHASHSEED": "11"}
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=workdir)
    assert tree_sha256(again) == tree_sha256(built)


def test_eight_bit_activations_compose_with_int8_weights_and_with_the_recipe(recipe_build):
    from sd3coreml.compress.activations import activation_quantized_ops, quantization_summary

    workdir, _ = recipe_build
    mmdit = workdir / "results/demo/mmdit/4step"
    (conditioning,) = mmdit.rglob("conditioning.int8_linear_symmetric_per_channel_a8.mlpackage")
    (stage1,) = mmdit.rglob("blocks0-1.recipe-bpw4_a8.mlpackage")
    # iOS18's int8 weights are constexpr_blockwise_shift_scale; palettes constexpr_lut_to_dense.
    for package, weights in ((conditioning, "constexpr_blockwise_shift_scale"), (stage1, "constexpr_lut_to_dense")):
        program = load_program(load_package(package))
        op_types = {op.op_type for function in program.functions.values() for op in function.operations}
        assert {"quantize", "dequantize", weights} <= op_types, package.name
        assert quantization_summary(program)["quantized"].get("linear", 0) > 0
    # The ops the analysis found most sensitive keep fp16 activations in the package; the others are 8-bit.
    (record,) = (workdir / "results/demo/activations").rglob("blocks0-1.json")
    record = json.loads(record.read_text())
    kept, quantized = set(record["keep_fp16"]), set(activation_quantized_ops(load_program(load_package(stage1))))
    assert kept and not kept & quantized and quantized | kept == set(record["effects"])
    assert record["predicted_snr_db"] >= 40 > record["predicted_snr_db_all_quantized"]
    manifest = json.loads((workdir / FOLDER / "manifest.json").read_text())
    entry = manifest["artifacts"]["MultiModalDiffusionTransformerStage1"]
    assert entry["compression"] == {**BUDGET, "min_psnr_db": 26.0, "activations": "int8"}
    assert "A17 Pro / M4" in entry["activations"]["gains_speed_on"]
    assert "activations" not in manifest["artifacts"]["MultiModalDiffusionTransformerStage0"]
    fidelity = json.loads((workdir / "results/demo/reports/coremlsd3_4step_packages/fidelity.json").read_text())
    rows = [row for row in fidelity["outputs"] if row["package"].endswith("_a8.mlpackage")]
    assert len(rows) == 3 and {row["min_psnr_db"] for row in rows} == {25} and fidelity["passed"]


def test_activation_ranges_repeat_with_another_hash_seed_and_omp_thread_count(recipe_build, tmp_path):
    workdir, _ = recipe_build
    (built,) = (workdir / "results/demo/activations").rglob("blocks0-1.json")
    (package,) = (workdir / "results/demo/mmdit/4step").rglob("blocks0-1.fp16.mlpackage")
    (calibration,) = (workdir / "results/demo/calibration/4step").iterdir()
    again = tmp_path / "ranges.json"
    command = [sys.executable, "-m", "sd3coreml", "activation-ranges", "--package", str(package),
               "--calibration", str(calibration), "--piece", "block0", "--probe-samples", "1", "--min-snr-db", "40",
               "--out", str(again)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONHASHSEED": "11"}
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=workdir)
    assert again.read_bytes() == built.read_bytes()
    assert json.loads(built.read_text())["samples"] == 16  # 4 prompts x 4 steps


def test_a_w8a8_package_is_made_again_byte_identical(recipe_build, tmp_path):
    workdir, _ = recipe_build
    mmdit = workdir / "results/demo/mmdit/4step"
    (built,) = mmdit.rglob("conditioning.int8_linear_symmetric_per_channel_a8.mlpackage")
    (package,) = mmdit.rglob("conditioning.fp16.mlpackage")
    (ranges,) = (workdir / "results/demo/activations").rglob("conditioning.json")
    again = tmp_path / built.name
    command = [sys.executable, "-m", "sd3coreml", "compress-package", "--package", str(package), "--out", str(again),
               "--compression", "int8_linear_symmetric_per_channel_a8", "--activation-ranges", str(ranges)]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "5"}, cwd=workdir)
    assert tree_sha256(again) == tree_sha256(built)
