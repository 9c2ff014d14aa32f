"""Recipe files: their grammar, their name by content, and the parse-time check against a model's tensors."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from harness import REPO
from safetensors.numpy import save_file
from snakemake.utils import validate

from sd3coreml.compress.recipes import Recipe, plan_table, transformer_table
from sd3coreml.compress.settings import FolderCompression, configured_recipe
from sd3coreml.errors import PipelineError
from sd3coreml.inputs.checkpoint import load_transformer_config, sd3_tensor_shapes
from sd3coreml.pipeline.config import plan_models
from sd3coreml.sweep.plan import plan_sweep

TINY_CONFIG = REPO / "config" / "transformers" / "sd3-tiny.json"
# In the tiny model (width 64) the feed-forward weights (256 x 64) are over the 10,000 values
# palettes need; the attention projections (64 x 64) are under.
FF = "transformer_blocks.0.ff.net.0.proj.weight"
GOOD = {
    "format": "sd3coreml-recipe/1",
    "weights": {FF: {"nbits": 2, "granularity": "per_tensor"}, "transformer_blocks.1.ff.net.2.weight": "fp16"},
    "default": {"mode": "palettize", "nbits": 4, "granularity": "per_grouped_channel", "group_size": 16},
}


def written(tmp_path: Path, data, name: str = "r.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def refused(path: Path) -> str:
    with pytest.raises(PipelineError) as error:
        Recipe.read(path, "config key 'compression.mmdit.file'")
    assert "\n" not in str(error.value)
    return str(error.value)


def test_the_name_is_the_content_not_its_spelling(tmp_path):
    spelled_out = {**GOOD, "weights": {FF: {"mode": "palettize", "granularity": "per_tensor", "nbits": 2},
                                       "transformer_blocks.1.ff.net.2.weight": "fp16"}}  # fmt: skip
    one = Recipe.read(written(tmp_path, GOOD, "a.json"), "k")
    other = Recipe.read(written(tmp_path, json.dumps(spelled_out, indent=3), "b.json"), "k")
    assert one == other and one.slug == other.slug and one.canonical_json() == other.canonical_json()
    assert one.setting_for(FF).slug == "palettize2_per_tensor"
    assert one.setting_for("transformer_blocks.1.ff.net.2.weight").slug == "fp16"
    assert one.setting_for("transformer_blocks.4.ff.net.2.weight") == one.default
    changed = Recipe.from_json({**GOOD, "weights": {FF: {"nbits": 1}}}, "c.json")
    assert changed.slug != one.slug


@pytest.mark.parametrize(
    "data, message",
    [
        ("{not json", "r.json: not JSON"),
        ([], "r.json: not a recipe"),
        ({**GOOD, "format": "sd3coreml-recipe/2"}, "r.json: key 'format' is 'sd3coreml-recipe/2'; this pipeline reads sd3coreml-recipe/1"),
        ({k: v for k, v in GOOD.items() if k != "default"}, "r.json: key 'default' is missing"),
        ({**GOOD, "layers": {}}, "r.json: key 'layers' is unknown"),
        ({**GOOD, "weights": [FF]}, "r.json: key 'weights' must map checkpoint tensor names"),
        ({**GOOD, "weights": {FF: {"nbits": 3}}}, f"r.json: key 'weights.{FF}.nbits' is 3; palettize takes 8 or 6 or 4 or 2 or 1"),
        ({**GOOD, "weights": {FF: {"mode": "recipe", "file": "x"}}}, f"r.json: key 'weights.{FF}.mode' is recipe"),
        ({**GOOD, "weights": {FF: "int8"}}, f"r.json: key 'weights.{FF}' is 'int8'"),
        ({**GOOD, "weights": {}, "default": "fp16"}, "r.json: compresses no weight"),
    ],
)  # fmt: skip
def test_bad_recipe_files_are_refused_in_one_line_naming_the_key(tmp_path, data, message):
    assert message in refused(written(tmp_path, data))


def test_a_missing_file_names_the_key_that_named_it(tmp_path):
    assert refused(tmp_path / "gone.json").startswith(
        f"config key 'compression.mmdit.file' ({tmp_path / 'gone.json'}): no such file"
    )


def test_entries_are_checked_against_the_conversion_target(tmp_path):
    recipe = Recipe.read(written(tmp_path, GOOD), "k")
    recipe.check("iOS18")
    with pytest.raises(
        PipelineError, match=r"r.json: key 'default' \(palettize, per_grouped_channel\) needs conversion_target iOS18"
    ):
        recipe.check("iOS17")


TABLE = transformer_table(TINY_CONFIG)


@pytest.mark.parametrize(
    "name, setting, message",
    [
        ("transformer_blocks.9.ff.net.2.weight", "fp16", "is no tensor of model 'm'; a recipe names checkpoint tensors, e.g. transformer_blocks.0.attn.to_q.weight"),
        ("transformer_blocks.0.ff.net.2.bias", "fp16", "is a 1-D tensor [64] of model 'm', not a linear or convolution weight"),
        ("pos_embed.pos_embed", "fp16", "is a 3-D tensor [1, 256, 64] of model 'm'"),
        ("transformer_blocks.0.attn.to_q.weight", {"nbits": 4}, "holds 4,096 values in model 'm'; coremltools applies palettize only to weights of more than 10,000"),
        ("transformer_blocks.0.attn.to_q.weight", {"mode": "linear_symmetric", "nbits": 8}, None),
        ("pos_embed.proj.weight", "fp16", None),
    ],
)  # fmt: skip
def test_a_recipe_names_compressible_weights_of_the_checkpoint(tmp_path, name, setting, message):
    recipe = Recipe.from_json({**GOOD, "weights": {name: setting}}, "r.json")
    if message is None:
        recipe.check_fits(TABLE, "model 'm'")
        return
    with pytest.raises(PipelineError) as error:
        recipe.check_fits(TABLE, "model 'm'", "compression.mmdit")
    assert str(error.value).startswith(f"r.json (compression.mmdit): weights.{name} ") and message in str(error.value)


def test_dtypes_come_from_the_weights_header_where_it_is_read(tmp_path):
    shapes = sd3_tensor_shapes(load_transformer_config(TINY_CONFIG))
    tensors = {name: np.zeros(shape, np.float16) for name, shape in shapes.items()}
    tensors[FF] = np.zeros(shapes[FF], np.int8)
    weights = tmp_path / "w.safetensors"
    save_file(tensors, str(weights))
    plan = SimpleNamespace(key="m", weights=weights, config_path=TINY_CONFIG, layout="diffusers")
    table = plan_table(plan)
    assert table[FF] == {"shape": shapes[FF], "dtype": "I8"} and table["proj_out.weight"]["dtype"] == "F16"
    with pytest.raises(PipelineError, match=f"weights.{FF} is I8 in model 'm', not a float tensor"):
        Recipe.from_json(GOOD, "r.json").check_fits(table, "model 'm'")
    # The original layout is normalised by a job: its names are the config's, dtypes unknown.
    assert plan_table(SimpleNamespace(**{**vars(plan), "layout": "original"}))[FF]["dtype"] is None


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    (tmp_path / "config" / "transformers").mkdir(parents=True)
    (tmp_path / "config" / "transformers" / "sd3-tiny.json").write_text(TINY_CONFIG.read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def demo_config(**changes) -> dict:
    """config/demo.yaml (its weights made by jobs, so checked against the pinned config's table), changed."""
    config = {**yaml.safe_load((REPO / "config" / "demo.yaml").read_text()), **changes}
    validate(config, str(REPO / "config" / "schema.yaml"))
    return config


def with_recipe(recipe: dict, **compression) -> dict:
    Path("recipe.json").write_text(json.dumps(recipe))
    setting = {"mode": "recipe", "file": "recipe.json"}
    return demo_config(compression={"mmdit": setting, **compression})


def test_a_config_with_a_recipe_is_planned_and_a_recipe_that_does_not_fit_is_refused_before_any_job(workdir):
    assert list(plan_models(with_recipe(GOOD))) == ["4step", "2step"]
    bad = {**GOOD, "weights": {"transformer_blocks.5.ff.net.2.weight": {"nbits": 2}}}
    with pytest.raises(PipelineError) as error:
        plan_models(with_recipe(bad))
    assert str(error.value).startswith(
        "recipe.json (compression.mmdit): weights.transformer_blocks.5.ff.net.2.weight is no tensor of model '4step' "
        "(results/demo/checkpoints/tiny-seed4.safetensors)"
    )
    with pytest.raises(PipelineError, match=r"^recipe.json: key 'default' \(palettize, per_grouped_channel\) needs"):
        plan_models(with_recipe(GOOD) | {"conversion_target": "iOS17", "compiler": {"deployment_target": "17.0"}})


def test_a_text_encoders_recipe_is_checked_against_each_encoder_it_is_given_to(tmp_path):
    """A family's recipe must fit both encoders; an override's, its own (tables from the components' headers)."""
    from sd3coreml.compress.recipes import check_recipes_fit

    components = tmp_path / "components"
    for folder, layers in (("text_encoder", 1), ("text_encoder_2", 2)):
        (components / folder).mkdir(parents=True)
        tensors = {f"text_model.encoder.layers.{i}.mlp.fc1.weight": np.zeros((256, 64), np.float16) for i in range(layers)}
        save_file({**tensors, "text_model.final_layer_norm.weight": np.zeros(64, np.float16)},
                  str(components / folder / "model.safetensors"))  # fmt: skip
    clip_g = written(tmp_path, {**GOOD, "weights": {"text_model.encoder.layers.1.mlp.fc1.weight": {"nbits": 4}}})

    def check(compression: dict):
        settings = FolderCompression.from_config({"mmdit": {"mode": "none"}, **compression}).settings()
        check_recipes_fit(settings, [], components)

    given = {"mode": "recipe", "file": str(clip_g)}
    check({"overrides": {"TextEncoder2": given}})
    with pytest.raises(PipelineError) as error:
        check({"text_encoders": given})
    assert str(error.value) == (
        f"{clip_g} (compression.text_encoders): weights.text_model.encoder.layers.1.mlp.fc1.weight is no tensor of "
        f"text encoder TextEncoder ({components / 'text_encoder'}); a recipe names checkpoint tensors, e.g. "
        "text_model.encoder.layers.0.mlp.fc1.weight"
    )
    rank1 = written(tmp_path, {**GOOD, "weights": {"text_model.final_layer_norm.weight": {"nbits": 4}}}, "rank1.json")
    with pytest.raises(PipelineError, match=r"weights.text_model.final_layer_norm.weight is a 1-D tensor \[64\] of "
                                            r"text encoder TextEncoder "):  # fmt: skip
        check({"text_encoders": {"mode": "recipe", "file": str(rank1)}})


def test_a_sweep_mode_may_be_a_recipe_checked_against_the_sweeps_model(workdir):
    config = with_recipe(GOOD) | {"compression": {"mmdit": {"mode": "none"}}}
    models = plan_models(config)
    recipe = {"mode": "recipe", "file": "recipe.json"}
    modes = {"recipe": recipe, "mix": {"default": {"mode": "none"}, "stages": {0: recipe}}}
    sweeps = {"r": {"model": "4step", "layouts": [[1, 2, 2]], "compression": modes}}
    Path("sweeps.yaml").write_text(yaml.safe_dump(sweeps))
    sweep = plan_sweep({**config, "sweep": {"name": "r", "file": "sweeps.yaml"}}, models)
    slug = Recipe.read(Path("recipe.json"), "k").slug
    modes = {mode.name: mode for mode in sweep.modes}
    assert modes["recipe"].default.slug == slug == modes["mix"].stages[0].slug
    assert configured_recipe(slug, FolderCompression.from_config(config["compression"]), sweep).file == "recipe.json"
    Path("recipe.json").write_text(json.dumps({**GOOD, "weights": {"norm_out.linear.weight": {"nbits": 2}}}))
    # yaml.safe_dump sorts the modes: `mix` is read first.
    with pytest.raises(
        PipelineError, match=r"^recipe.json \(sweeps.yaml: r.compression.mix.stages.0\): weights.norm_out"
    ):
        plan_sweep({**config, "sweep": {"name": "r", "file": "sweeps.yaml"}}, models)


def test_the_manifest_records_the_recipe_of_each_entry_that_used_one(workdir):
    from sd3coreml.compress.settings import FolderCompression
    from sd3coreml.release.manifest import entry_settings

    config = with_recipe(GOOD, overrides={"MultiModalDiffusionTransformerStage0": {"mode": "none"}})
    compression = FolderCompression.from_config(config["compression"])
    entries = entry_settings(plan_models(config)["4step"].ranges, config, compression)
    recorded = {"mode": "recipe", "file": "recipe.json", "sha256": Recipe.read(Path("recipe.json"), "k").sha256}
    assert entries["MultiModalDiffusionTransformerStage1"]["compression"] == recorded
    assert entries["MultiModalDiffusionTransformerConditioning"]["compression"] == recorded
    assert entries["MultiModalDiffusionTransformerStage0"]["compression"] == {"mode": "none"}
    assert entries["TextEncoder"]["compression"]["mode"] == "palettize"
