"""Recipes made from a budget, as Snakemake plans them (dry runs, no build): one calibration per model,
one analysis per MMDiT piece, the recipe, and the packages it compresses; none of it without a budget."""

import json

import yaml
from harness import DEMO_TARGETS, REPO, new_workdir, planned_jobs, snakemake, write_config

FOLDER = "coremlsd3_4step_packages"
BUDGET_RULES = ("capture_calibration", "analyse_weights", "recipe_from_budget", "compress_by_recipe")
BUDGET = {"mode": "recipe", "budget": {"bits_per_weight": 4}}
RECIPE = "results/demo/recipes/4step/recipe-bpw4.json"


def demo() -> dict:
    return yaml.safe_load((REPO / "config" / "demo.yaml").read_text())


def tiny_depth() -> int:
    return json.loads((REPO / "config" / "transformers" / "sd3-tiny.json").read_text())["num_layers"]


def test_a_budget_plans_its_calibration_an_analysis_per_piece_its_recipe_and_its_packages(tmp_path):
    workdir = new_workdir(tmp_path)
    config = write_config(workdir, "budget.yaml", compression={**demo()["compression"], "mmdit": BUDGET})
    result = snakemake(workdir, "-n", "-p", FOLDER, config=config)
    planned = planned_jobs(result)
    entries = len(demo()["stage_sizes"]) + 2  # Conditioning, Stage0 and a stage per block range
    assert {rule: planned.get(rule) for rule in BUDGET_RULES} == {
        "capture_calibration": 1,
        "analyse_weights": tiny_depth() + 2,  # conditioning, input and each joint block
        "recipe_from_budget": 1,
        "compress_by_recipe": entries,
    }
    assert "compress_package" not in planned
    output = result.stdout
    assert output.count(f"--compression recipe-bpw4 --recipe {RECIPE} ") == entries
    assert f"--budget bits_per_weight=4 --out {RECIPE} " in output
    # The folder's manifest records the recipe by its hash (assemble-folder hashes this path).
    assert f'"recipe recipe-bpw4": "{RECIPE}"' in output


def test_the_threshold_rule_recipe_of_a_budget_is_a_target_of_the_same_analyses(tmp_path):
    workdir = new_workdir(tmp_path)
    target = RECIPE.replace(".json", ".per_layer_threshold.json")
    result = snakemake(workdir, "-n", "-p", target)
    planned = planned_jobs(result)
    assert planned.get("threshold_recipe_from_budget") == 1 and planned.get("analyse_weights") == tiny_depth() + 2
    assert "recipe_from_budget" not in planned
    assert f"--budget bits_per_weight=4 --rule per_layer_threshold --out {target} " in result.stdout


def test_without_a_budget_nothing_of_it_is_planned(tmp_path):
    workdir = new_workdir(tmp_path)
    planned = planned_jobs(snakemake(workdir, "-n", *DEMO_TARGETS))
    assert planned and not set(BUDGET_RULES) & set(planned)


def test_a_sweep_takes_a_budget_as_a_mode(tmp_path):
    workdir = new_workdir(tmp_path)
    sweeps = yaml.safe_load((workdir / "config" / "sweeps.yaml").read_text())
    layouts = sweeps["demo"]["layouts"]
    sweeps["demo"]["compression"] = {"bpw4": BUDGET, "int8": demo()["compression"]["mmdit"]}
    (workdir / "config" / "sweeps_budget.yaml").write_text(yaml.safe_dump(sweeps))
    config = write_config(workdir, "sweep_budget.yaml", sweep={"name": "demo", "file": "config/sweeps_budget.yaml"})
    planned = planned_jobs(snakemake(workdir, "-n", "sweep", config=config))
    # Each stage package of each layout, block ranges that layouts share once.
    stems = {(start, start + size) for sizes in layouts for start, size in zip_starts(sizes)}
    assert {rule: planned.get(rule) for rule in BUDGET_RULES} == {
        "capture_calibration": 1,
        "analyse_weights": tiny_depth() + 2,
        "recipe_from_budget": 1,
        # and the input stage, and Conditioning for the mode's end-to-end check
        "compress_by_recipe": len(stems) + 2,
    }
    assert planned.get("sweep_end_to_end") == 2  # one per mode, not per layout
    assert planned.get("sweep_fp16_chain") == 1  # the side every mode is held against, once


def zip_starts(sizes: list[int]):
    """(start, size) of each block range of a layout."""
    starts = [sum(sizes[:index]) for index in range(len(sizes))]
    return zip(starts, sizes, strict=True)
