"""Recipes made from a budget: their artifacts' names, what a folder's manifest records of them, and
the `sensitivity` config the rules read."""

import hashlib
import re
from pathlib import Path

import pytest
import yaml
from harness import REPO
from snakemake.utils import validate

from sd3coreml.compress.palettes import EXACT_KMEANS_MIN_VALUES
from sd3coreml.compress.settings import NBITS, PALETTIZE, CompressionSetting, FolderCompression
from sd3coreml.errors import PipelineError
from sd3coreml.pipeline.artifacts import (
    ANALYSIS_PIECE_WILDCARD,
    GENERATED,
    Artifacts,
    analysis_pieces,
    calibration_name,
    setting_of_package,
)
from sd3coreml.pipeline.config import check_compression, check_sensitivity
from sd3coreml.release.manifest import manifest_request
from sd3coreml.stages import BlockRange

SCHEMA = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
RANGES = (BlockRange(0, 1, False), BlockRange(1, 3, True))
BPW = {"mode": "recipe", "budget": {"bits_per_weight": 4.5}}
INT8 = {"mode": "linear_symmetric", "nbits": 8, "granularity": "per_channel"}


def artifacts(**compression) -> Artifacts:
    config = {"output_root": "results/x", "conversion_target": "iOS18", "latent_size": [16, 16],
              "compiler": {"deployment_target": "18.2"},
              "compression": {"mmdit": INT8, "text_encoders": {"mode": "palettize", "nbits": 6}, **compression}}  # fmt: skip
    return Artifacts.of(config)


def test_a_calibration_is_named_by_what_determines_it():
    prompts = ["a cat", "a dog"]
    name = calibration_name(prompts, 4, 3.0, 0, (64, 64))
    assert re.fullmatch(r"p[0-9a-f]{8}-steps4-shift3-seed0-latent64x64", name)
    assert name.startswith("p" + hashlib.sha256(b"a cat\na dog").hexdigest()[:8])
    others = {calibration_name(prompts[::-1], 4, 3.0, 0, (64, 64)), calibration_name(prompts, 2, 3.0, 0, (64, 64)),
              calibration_name(prompts, 4, 3.5, 0, (64, 64)), calibration_name(prompts, 4, 3.0, 1, (64, 64)),
              calibration_name(prompts, 4, 3.0, 0, (32, 64))}  # fmt: skip
    assert len(others) == 5 and name not in others


def test_the_chain_of_a_budgets_recipe_under_the_output_root():
    art = artifacts()
    assert art.calibration("4step", "c") == "results/x/calibration/4step/c"
    assert art.analysis("4step", "c", "block3") == "results/x/sensitivity/4step/c/block3.per_tensor.json"
    assert art.recipe("4step", "recipe-bpw4.5") == "results/x/recipes/4step/recipe-bpw4.5.json"
    assert art.recipe("4step", "recipe-bpw4.5", report=True) == "results/x/recipes/4step/recipe-bpw4.5.report.json"
    assert art.job_log("analysis", model="m", calibration="c", piece="input") == (
        "results/x/logs/sensitivity/m/c/input.per_tensor.log"
    )
    assert {"calibration", "sensitivity", "recipes"} <= set(GENERATED)
    pieces = analysis_pieces(3)
    assert pieces == ["conditioning", "input", "block0", "block1", "block2"]
    assert all(re.fullmatch(ANALYSIS_PIECE_WILDCARD, piece) for piece in pieces)
    assert not re.fullmatch(ANALYSIS_PIECE_WILDCARD, "blocks0-1")


def test_a_slug_with_a_dot_still_names_its_package():
    art = artifacts()
    package = "results/x/mmdit/m/iOS18/latent16x16/blocks1-3_head.recipe-bpw4.5.mlpackage"
    assert setting_of_package(package) == CompressionSetting.from_slug("recipe-bpw4.5")
    assert art.package_parts(package) == {
        "path": "mmdit/m/iOS18/latent16x16/blocks1-3_head",
        "precision": "recipe-bpw4.5",
    }
    assert art.measurement(package) == "results/x/fidelity/mmdit/m/iOS18/latent16x16/blocks1-3_head.recipe-bpw4.5.json"
    assert art.package_parts("results/x/vae/iOS18/latent16x16/VAEDecoder.fp16.mlpackage")["precision"] == "fp16"


def test_a_budgets_package_reads_the_recipe_made_for_its_model():
    art = artifacts(mmdit=BPW)
    setting = art.compression_of("MultiModalDiffusionTransformerStage1", "mmdit")
    made = art.recipe_for_package("mmdit/2step/iOS18/latent16x16/blocks0-1", setting)
    assert made.file == "results/x/recipes/2step/recipe-bpw4.5.json"
    assert made.flags == "--compression recipe-bpw4.5 --recipe results/x/recipes/2step/recipe-bpw4.5.json"
    text = art.recipe_for_package("text_encoders/iOS18/TextEncoder2", setting)
    assert text.file == "results/x/recipes/text_encoders/recipe-bpw4.5/TextEncoder2.json"
    with pytest.raises(PipelineError, match=r"^vae/iOS18/latent16x16/VAEDecoder: neither an MMDiT piece nor a text"):
        art.recipe_for_package("vae/iOS18/latent16x16/VAEDecoder", setting)


def test_a_folder_records_each_recipe_made_for_it_and_nothing_otherwise():
    plan = type("Plan", (), {"key": "4step", "ranges": RANGES, "weights": "w.safetensors", "config_path": "c.json"})
    config = {"conversion_target": "iOS18", "latent_size": [16, 16], "batch_size": 1, "components": "components",
              "compiler": {"command": "xcrun", "deployment_target": "18.2"}}  # fmt: skip
    uniform = artifacts()
    assert uniform.generated_recipes("4step", RANGES) == {}
    request = manifest_request(plan, config, uniform.compression, "t.json", "packages")
    assert manifest_request(plan, config, uniform.compression, "t.json", "packages", {}) == request
    snr = {"mode": "recipe", "budget": {"min_snr_db": 30}}
    mixed = artifacts(mmdit=BPW, overrides={"MultiModalDiffusionTransformerStage0": snr})
    recipes = mixed.generated_recipes("4step", RANGES)
    assert recipes == {"recipe-bpw4.5": "results/x/recipes/4step/recipe-bpw4.5.json",
                       "recipe-snr30dB": "results/x/recipes/4step/recipe-snr30dB.json"}  # fmt: skip
    files = manifest_request(plan, config, mixed.compression, "t.json", "app", recipes)["input_files"]
    assert files["recipe recipe-bpw4.5"] == recipes["recipe-bpw4.5"] and len(files) == 5
    # Every MMDiT entry overridden: the family's budget compresses nothing of the folder.
    overrides = {entry: INT8 for entry in ("MultiModalDiffusionTransformerConditioning",
                                           *(f"MultiModalDiffusionTransformerStage{index}" for index in range(3)))}  # fmt: skip
    assert artifacts(mmdit=BPW, overrides=overrides).generated_recipes("4step", RANGES) == {}
    # The text encoders' budget: a recipe per encoder, labelled by the encoder too.
    text = artifacts(text_encoders=BPW).generated_recipes("4step", RANGES)
    assert text == {f"recipe-bpw4.5 {entry}": f"results/x/recipes/text_encoders/recipe-bpw4.5/{entry}.json"
                    for entry in ("TextEncoder", "TextEncoder2")}  # fmt: skip


def test_the_sensitivity_defaults_are_spelled_alike_and_agree_with_the_code():
    defaults = {key: value["default"] for key, value in SCHEMA["properties"]["sensitivity"]["properties"].items()}
    assert sorted(defaults["widths"]) == sorted(NBITS[PALETTIZE])
    assert defaults["min_values"] == EXACT_KMEANS_MIN_VALUES
    assert len(defaults["prompts"]) == 4 and len(set(defaults["prompts"])) == 4
    assert yaml.safe_load((REPO / "config" / "config.yaml").read_text())["sensitivity"] == defaults
    # The demo leaves out 8-bit palettes, most of the k-means time of its analyses (0.8 s a weight).
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())["sensitivity"]
    assert demo == {**defaults, "widths": [1, 2, 4, 6]}
    config = {"components": "c", "models": {"m": {"weights": "w", "config": "c"}}}
    validate(config, str(REPO / "config" / "schema.yaml"))
    assert config["sensitivity"] == defaults


def test_a_probe_width_must_be_measured_and_a_recipe_file_must_not_lie_where_cleanup_looks(tmp_path, monkeypatch):
    sensitivity = {"widths": [4, 8], "probe_widths": [4, 2]}
    with pytest.raises(PipelineError, match=r"^config key 'sensitivity.probe_widths' holds 2, not one of"):
        check_sensitivity({"sensitivity": sensitivity})
    check_sensitivity({"sensitivity": {**sensitivity, "probe_widths": [8]}})
    monkeypatch.chdir(tmp_path)
    Path("results/recipes").mkdir(parents=True)
    Path("results/recipes/mine.json").write_text(
        '{"format": "sd3coreml-recipe/1", "weights": {}, "default": {"nbits": 4, "granularity": "per_tensor"}}'
    )
    config = {"output_root": "results/", "conversion_target": "iOS18",
              "compression": {"mmdit": {"mode": "recipe", "file": "results/recipes/mine.json"}}}  # fmt: skip
    with pytest.raises(PipelineError, match=r"^config key 'compression.mmdit.file' \(results/recipes/mine.json\) lies"):
        check_compression(config)
    Path("mine.json").write_text(Path("results/recipes/mine.json").read_text())
    config["compression"]["mmdit"]["file"] = "mine.json"
    assert isinstance(check_compression(config), FolderCompression)
