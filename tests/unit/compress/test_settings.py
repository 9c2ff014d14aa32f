"""The compression setting as one value: config, slug, flags, argparse and the manifest agree."""

import itertools
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from sd3coreml.commands.main import build_parser
from sd3coreml.compress.settings import (
    A8_SLUG,
    ACTIVATIONS,
    GRANULARITIES,
    MODES,
    NBITS,
    RECIPE,
    RECIPE_SLUG,
    SINGLE_THREAD_SLUG,
    SLUG_PATTERN,
    TENSOR_PALETTE_SLUG,
    CompressionSetting,
    FolderCompression,
    checked_setting,
    configured_recipe,
)
from sd3coreml.errors import PipelineError

SCHEMA = yaml.safe_load((Path(__file__).parents[3] / "config" / "schema.yaml").read_text())
PROPERTIES = SCHEMA["$defs"]["compression"]["properties"]


def schema_settings():
    """Every compression config the schema's enums admit, with and without each size key."""
    for mode, nbits, granularity in itertools.product(
        PROPERTIES["mode"]["enum"], PROPERTIES["nbits"]["enum"], PROPERTIES["granularity"]["enum"]
    ):
        for sizes in ({}, {"block_size": 32}, {"group_size": 16}):
            for activations in (None, *PROPERTIES["activations"]["enum"]):
                given = {"activations": activations} if activations else {}
                yield {"mode": mode, "nbits": nbits, "granularity": granularity, **sizes, **given}
    yield {"mode": "none"}


def buildable():
    settings = []
    for value in schema_settings():
        try:
            settings.append(CompressionSetting.from_config(value, "compression.mmdit"))
        except PipelineError as error:
            assert "\n" not in str(error) and str(error).startswith("config key 'compression.mmdit")
    return sorted(set(settings), key=lambda setting: setting.slug)


def test_the_schema_enums_are_the_settings_tables():
    assert PROPERTIES["mode"]["enum"] == ["none", *MODES, RECIPE]
    assert sorted(PROPERTIES["nbits"]["enum"]) == sorted({nbits for widths in NBITS.values() for nbits in widths})
    assert sorted(PROPERTIES["granularity"]["enum"]) == sorted({g for offered in GRANULARITIES.values() for g in offered})
    assert PROPERTIES["activations"]["enum"] == list(ACTIVATIONS)


def test_every_buildable_setting_round_trips_through_slug_flags_argparse_and_config():
    settings = buildable()
    # none, int8 x3, int4 x3, palettes 5 widths (1, 2, 4, 6, 8) x 2 granularities; each compressed one
    # also with 8-bit activations
    assert len(settings) == 1 + 2 * (3 + 3 + 5 * 2)
    for setting in settings:
        assert CompressionSetting.from_slug(setting.slug) == setting
        assert CompressionSetting.from_config(setting.to_config()) == setting
        if setting.mode == "none":
            assert setting.slug == "fp16" and setting.precision == "fp16"
            continue
        assert re.fullmatch(SLUG_PATTERN, setting.slug), setting.slug
        # Each slug is one rule's: 8-bit activations' own, else by the threads its weights use.
        assert bool(re.fullmatch(A8_SLUG, setting.slug)) == bool(setting.activations)
        weights_only = not setting.activations
        assert bool(re.fullmatch(TENSOR_PALETTE_SLUG, setting.slug)) == (weights_only and setting.uses_threads)
        assert bool(re.fullmatch(SINGLE_THREAD_SLUG, setting.slug)) == (weights_only and not setting.uses_threads)
        argv = ["compress-package", "--package", "in.mlpackage", "--out", "out.mlpackage", *shlex.split(setting.flags)]
        assert build_parser("compress-package").parse_args(argv).compression == setting


def test_the_command_refuses_what_names_no_compressed_setting(capsys):
    for slug in ("fp16", "int6_linear_symmetric_per_channel", "palettize4_per_channel", "int8_linear_symmetric_per_block"):
        with pytest.raises(SystemExit):
            build_parser("compress-package").parse_args(["compress-package", "--package", "a", "--out", "b",
                                                         "--compression", slug])  # fmt: skip
        assert "--compression" in capsys.readouterr().err


@pytest.mark.parametrize(
    "value, slug, label, precision",
    [
        ({"mode": "linear_symmetric", "nbits": 8}, "int8_linear_symmetric_per_channel",
         "linear_symmetric 8-bit per_channel", "int8"),
        ({"mode": "linear_symmetric", "nbits": 4, "granularity": "per_block", "block_size": 32},
         "int4_linear_symmetric_per_block32", "linear_symmetric 4-bit per_block 32", "int4"),
        ({"mode": "palettize", "nbits": 6}, "palettize6_per_tensor", "palettize 6-bit per_tensor", "palettized"),
        ({"mode": "palettize", "nbits": 4, "granularity": "per_grouped_channel", "group_size": 16},
         "palettize4_per_grouped_channel16", "palettize 4-bit per_grouped_channel 16", "palettized"),
    ],
)  # fmt: skip
def test_slug_label_and_precision_of_known_settings(value, slug, label, precision):
    # The slug names packages on disk and the label is package metadata: both are release bytes.
    setting = CompressionSetting.from_config(value)
    assert (setting.slug, setting.label, setting.precision) == (slug, label, precision)


@pytest.mark.parametrize(
    "value, slug, label",
    [
        ({"mode": "linear_symmetric", "nbits": 8, "activations": "int8"}, "int8_linear_symmetric_per_channel_a8",
         "linear_symmetric 8-bit per_channel + int8 activations"),
        ({"mode": "palettize", "nbits": 6, "activations": "int8"}, "palettize6_per_tensor_a8",
         "palettize 6-bit per_tensor + int8 activations"),
        ({"mode": "recipe", "budget": {"bits_per_weight": 4.5}, "activations": "int8"}, "recipe-bpw4.5_a8",
         "recipe-bpw4.5 + int8 activations"),
    ],
)  # fmt: skip
def test_eight_bit_activations_compose_with_every_weight_setting(value, slug, label):
    setting = CompressionSetting.from_config(value, "compression.mmdit")
    assert (setting.slug, setting.label, setting.precision) == (slug, label, "a8")
    assert CompressionSetting.from_slug(slug) == setting == CompressionSetting.from_config(setting.to_config())
    assert setting.to_config()["activations"] == "int8"
    with pytest.raises(PipelineError) as error:
        checked_setting(value, "compression.mmdit", "iOS16")
    assert str(error.value).startswith("config key 'compression.mmdit' (activations int8) needs conversion_target iOS17")
    checked_setting(value, "compression.mmdit", "iOS17")


def test_eight_bit_activations_are_refused_without_compressed_weights_or_of_another_width():
    with pytest.raises(PipelineError, match=r"^config key 'compression.mmdit.activations' goes with compressed weights"):
        CompressionSetting.from_config({"mode": "none", "activations": "int8"}, "compression.mmdit")
    with pytest.raises(PipelineError, match=r"^config key 'compression.mmdit.activations' is 'int4'; write int8"):
        CompressionSetting.from_config({"mode": "palettize", "nbits": 4, "activations": "int4"}, "compression.mmdit")
    with pytest.raises(PipelineError, match=r"^'fp16_a8' names no compression setting"):
        CompressionSetting.from_slug("fp16_a8")




def test_a_folders_compression_takes_an_entrys_override_before_its_family():
    config = {
        "mmdit": {"mode": "linear_symmetric", "nbits": 8, "granularity": "per_channel"},
        "text_encoders": {"mode": "palettize", "nbits": 6, "granularity": "per_tensor"},
        "overrides": {"MultiModalDiffusionTransformerStage0": {"mode": "none"}},
    }
    compression = FolderCompression.from_config(config, "iOS18")
    assert compression.for_entry("MultiModalDiffusionTransformerStage0", "mmdit") == CompressionSetting()
    assert compression.for_entry("MultiModalDiffusionTransformerStage1", "mmdit").slug == "int8_linear_symmetric_per_channel"
    assert compression.to_config() == config
    with pytest.raises(PipelineError, match=r"^config key 'compression.overrides.TextEncoder' \(linear_symmetric, 4-bit\) needs"):
        FolderCompression.from_config({**config, "overrides": {"TextEncoder": {"mode": "linear_symmetric", "nbits": 4}}}, "iOS17")


RECIPE_JSON = {
    "format": "sd3coreml-recipe/1",
    "weights": {"transformer_blocks.0.attn.to_q.weight": {"nbits": 2, "granularity": "per_tensor"}},
    "default": "fp16",
}


def test_a_recipe_setting_is_named_by_its_content_and_carries_its_file(tmp_path):
    import json

    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(RECIPE_JSON))
    second.write_text(json.dumps(RECIPE_JSON, indent=4))  # the same content, spelled otherwise
    setting = CompressionSetting.from_config({"mode": "recipe", "file": str(first)}, "compression.mmdit")
    twin = CompressionSetting.from_config({"mode": "recipe", "file": str(second)})
    assert re.fullmatch(RECIPE_SLUG, setting.slug) and re.fullmatch(SLUG_PATTERN, setting.slug)
    assert setting == twin == CompressionSetting.from_slug(setting.slug) and setting.file != twin.file
    assert setting.label == setting.slug == setting.precision and setting.uses_threads
    assert setting.flags == f"--compression {setting.slug} --recipe {first}"
    sha256 = setting.recipe_content.sha256
    assert setting.slug == f"recipe-{sha256[:12]}"
    assert setting.to_config() == {"mode": "recipe", "file": "a.json", "sha256": sha256}
    argv = ["compress-package", "--package", "in", "--out", "out", *shlex.split(setting.flags)]
    args = build_parser("compress-package").parse_args(argv)
    assert (args.compression, args.recipe) == (setting, first)
    compression = FolderCompression.from_config({"mmdit": {"mode": "recipe", "file": str(first)}}, "iOS18")
    assert configured_recipe(setting.slug, None, compression).file == str(first)
    with pytest.raises(PipelineError, match=r"^recipe-0{12}: no recipe of this content is configured"):
        configured_recipe("recipe-" + "0" * 12, compression)
    # An edit is another package.
    second.write_text(json.dumps({**RECIPE_JSON, "default": {"nbits": 8}}))
    assert CompressionSetting.from_config({"mode": "recipe", "file": str(second)}) != setting


def test_the_job_refuses_a_recipe_file_that_no_longer_holds_its_slugs_content(tmp_path):
    import json

    path = tmp_path / "r.json"
    path.write_text(json.dumps(RECIPE_JSON))
    planned = CompressionSetting.from_slug(CompressionSetting.from_config({"mode": "recipe", "file": str(path)}).slug)
    assert planned.with_recipe_file(path).recipe_content.weights
    path.write_text(json.dumps({**RECIPE_JSON, "default": {"nbits": 4}}))
    with pytest.raises(PipelineError, match=r"r.json: holds recipe-\w{12}, not the recipe-\w{12} this package is named after"):
        planned.with_recipe_file(path)
    with pytest.raises(PipelineError, match=r"^--compression recipe-\w{12} needs --recipe FILE"):
        planned.with_recipe_file(None)
    with pytest.raises(PipelineError, match="goes with a recipe-<id> setting"):
        CompressionSetting.from_slug("palettize2_per_tensor").with_recipe_file(path)


@pytest.mark.parametrize(
    "value, message",
    [
        ({"mode": "recipe"}, "config key 'compression.mmdit.file' is missing"),
        ({"mode": "recipe", "file": "r.json", "nbits": 4}, "config key 'compression.mmdit.nbits': a recipe gives each weight"),
        ({"mode": "recipe", "file": "absent.json"}, "config key 'compression.mmdit.file' (absent.json): no such file"),
        ({"mode": "palettize", "nbits": 4, "file": "r.json"}, "config key 'compression.mmdit.file' goes with mode recipe only"),
        ({"mode": "palettize", "nbits": 3}, "config key 'compression.mmdit.nbits' is 3; palettize takes 8 or 6 or 4 or 2 or 1"),
    ],
)  # fmt: skip
def test_bad_recipe_settings_name_their_key(value, message, tmp_path, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.json").write_text(json.dumps(RECIPE_JSON))
    with pytest.raises(PipelineError) as error:
        CompressionSetting.from_config(value, "compression.mmdit")
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_every_entry_takes_a_recipe_file_and_only_the_text_encoders_family_a_budget(tmp_path):
    import json

    (tmp_path / "r.json").write_text(json.dumps(RECIPE_JSON))
    recipe = {"mode": "recipe", "file": str(tmp_path / "r.json")}
    for config, entry in (({"text_encoders": recipe}, "TextEncoder"), ({"overrides": {"TextEncoder2": recipe}}, "TextEncoder2"),
                          ({"overrides": {"Conditioning": recipe}}, "Conditioning")):  # fmt: skip
        compression = FolderCompression.from_config({"mmdit": {"mode": "none"}, "text_encoders": {"mode": "none"}, **config})
        family = "mmdit" if entry == "Conditioning" else "text_encoders"
        assert compression.for_entry(entry, family).mode == "recipe"
    budget = {"mode": "recipe", "budget": {"bits_per_weight": 6}}
    with pytest.raises(PipelineError) as error:
        FolderCompression.from_config({"mmdit": {"mode": "none"}, "overrides": {"TextEncoder2": budget}})
    assert str(error.value) == (
        "config key 'compression.overrides.TextEncoder2': a budget's recipe is allocated over both text encoders at "
        "once; give the budget to compression.text_encoders, or this encoder a recipe file (mode recipe, file: PATH)"
    )


BUDGET_CASES = [
    ({"bits_per_weight": 4.5}, "recipe-bpw4.5", "bits_per_weight=4.5"),
    ({"bits_per_weight": 4}, "recipe-bpw4", "bits_per_weight=4"),
    ({"bits_per_weight": 0.00001}, "recipe-bpw1e-05", "bits_per_weight=1e-05"),
    ({"bytes": 900000000}, "recipe-bytes900000000", "bytes=900000000"),
    ({"min_snr_db": 30}, "recipe-snr30dB", "min_snr_db=30"),
    ({"min_snr_db": 27.25}, "recipe-snr27.25dB", "min_snr_db=27.25"),
]


@pytest.mark.parametrize("budget, slug, argument", BUDGET_CASES)
def test_a_budgets_recipe_is_named_by_its_budget_and_round_trips(budget, slug, argument, tmp_path):
    from sd3coreml.compress.settings import RECIPE_BUDGET_SLUG, RECIPE_CONTENT_SLUG

    setting = CompressionSetting.from_config({"mode": "recipe", "budget": budget}, "compression.mmdit")
    assert (setting.slug, setting.budget_arg, setting.label, setting.precision) == (slug, argument, slug, slug)
    assert setting.uses_threads and setting.file is None and setting.content is None
    for pattern in (RECIPE_SLUG, RECIPE_BUDGET_SLUG, SLUG_PATTERN):
        assert re.fullmatch(pattern, slug), pattern
    assert not re.fullmatch(RECIPE_CONTENT_SLUG, slug)
    assert not re.fullmatch(SINGLE_THREAD_SLUG, slug) and not re.fullmatch(TENSOR_PALETTE_SLUG, slug)
    assert CompressionSetting.from_slug(slug) == setting
    kind, value = next(iter(budget.items()))
    assert setting.to_config() == {"mode": "recipe", "budget": {kind: value}}
    assert CompressionSetting.from_config(setting.to_config()) == setting
    # No file at parse time: nothing to check against the target or the checkpoint, yet.
    assert checked_setting({"mode": "recipe", "budget": budget}, "compression.mmdit", "iOS16") == setting
    with pytest.raises(PipelineError, match=rf"^{re.escape(slug)}: no recipe file is known for it; pass the recipe"):
        assert setting.flags
    recipe = tmp_path / f"{slug}.json"
    recipe.write_text(json.dumps(RECIPE_JSON))
    argv = ["compress-package", "--package", "in", "--out", "out", "--compression", slug, "--recipe", str(recipe)]
    assert build_parser("compress-package").parse_args(argv).compression == setting


def test_a_content_slug_is_no_budgets_and_the_tables_agree_with_the_schema():
    from sd3coreml.compress.settings import BUDGETS, RECIPE_BUDGET_SLUG

    assert set(PROPERTIES["budget"]["properties"]) == set(BUDGETS)
    assert not re.fullmatch(RECIPE_BUDGET_SLUG, "recipe-b0e0f0a0c0d0") and re.fullmatch(RECIPE_SLUG, "recipe-b0e0f0a0c0d0")
    assert CompressionSetting.from_slug("recipe-b0e0f0a0c0d0").budget is None


def test_the_job_takes_whatever_recipe_was_made_for_a_budget(tmp_path):
    path = tmp_path / "recipe-bpw4.json"
    path.write_text(json.dumps(RECIPE_JSON))
    planned = CompressionSetting.from_slug("recipe-bpw4")
    made = planned.with_recipe_file(path)
    assert made == planned and made.file == str(path) and made.recipe_content.weights
    assert made.flags == f"--compression recipe-bpw4 --recipe {path}" and not made.uses_grouped_palettes
    # Its manifest record names the budget; the recipe's hash is recorded among the folder's inputs.
    assert made.to_config() == {"mode": "recipe", "budget": {"bits_per_weight": 4.0}}
    path.write_text(json.dumps({**RECIPE_JSON, "default": {"nbits": 4}}))  # made again, other content
    assert planned.with_recipe_file(path).recipe_content.default.nbits == 4
    with pytest.raises(PipelineError, match=r"^--compression recipe-bpw4 needs --recipe FILE"):
        planned.with_recipe_file(None)


KEY = "config key 'compression.mmdit.budget"
BPW = "average bits per weight as a number above 0 and at most 16, e.g. 4.5"
SIX_DIGITS = "a recipe's name keeps 6 significant digits"
ONE = "{bits_per_weight: 4.5} or {bytes: 900000000} or {min_snr_db: 30}"


@pytest.mark.parametrize(
    "budget, message",
    [
        ({"bits_per_weight": 17}, f"{KEY}.bits_per_weight' is 17; write average bits per weight as a number"),
        ({"bits_per_weight": 16.5}, f"{KEY}.bits_per_weight' is 16.5; write {BPW}"),
        ({"bits_per_weight": 0}, f"{KEY}.bits_per_weight' is 0; write"),
        ({"bits_per_weight": "4"}, f"{KEY}.bits_per_weight' is '4'; write"),
        ({"bits_per_weight": 4.1234567}, f"{KEY}.bits_per_weight' is 4.1234567; {SIX_DIGITS}: write 4.12346"),
        ({"bytes": 1.5e9}, f"{KEY}.bytes' is 1500000000.0; write bytes of the weights as an integer above 0"),
        ({"bytes": True}, f"{KEY}.bytes' is True; write"),
        ({"min_snr_db": float("inf")}, f"{KEY}.min_snr_db' is inf; write the quality floor in dB"),
        ({"min_snr_db": -3}, f"{KEY}.min_snr_db' is -3; write"),
        ({"bits_per_weight": 4, "bytes": 9}, f"{KEY}' is {{'bits_per_weight': 4, 'bytes': 9}}; give one budget: {ONE}"),
        ({"bpw": 4}, f"{KEY}' is {{'bpw': 4}}; give one budget"),
        (4.5, f"{KEY}' is 4.5; give one budget"),
    ],
)  # fmt: skip
def test_bad_budgets_are_refused_in_one_line_naming_the_key(budget, message):
    with pytest.raises(PipelineError) as error:
        CompressionSetting.from_config({"mode": "recipe", "budget": budget}, "compression.mmdit")
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_recipe_is_a_file_or_a_budget_and_a_slug_has_one_spelling(tmp_path):
    with pytest.raises(PipelineError, match=r"^config key 'k': a recipe is given as a file or made from a budget; drop one"):
        CompressionSetting.from_config({"mode": "recipe", "file": "r.json", "budget": {"bytes": 9}}, "k")
    with pytest.raises(PipelineError, match=r"^config key 'k.file' is missing; .* or give a budget"):
        CompressionSetting.from_config({"mode": "recipe"}, "k")
    for slug in ("recipe-bpw4.50", "recipe-bpw04", "recipe-snr30", "recipe-bytes1e+09"):
        with pytest.raises(PipelineError, match=rf"^'{re.escape(slug)}' names no compression setting"):
            CompressionSetting.from_slug(slug)
    with pytest.raises(PipelineError, match=r"^'recipe-bpw20': the budget is 20.0; write average bits"):
        CompressionSetting.from_slug("recipe-bpw20")


def test_a_budgets_recipe_is_found_by_its_slug():
    budget = {"mode": "recipe", "budget": {"bits_per_weight": 4.5}}
    text = FolderCompression.from_config({"mmdit": {"mode": "none"}, "text_encoders": budget})
    assert configured_recipe("recipe-bpw4.5", text).budget == ("bits_per_weight", 4.5)
    compression = FolderCompression.from_config({"mmdit": budget, "text_encoders": {"mode": "none"}}, "iOS18")
    assert configured_recipe("recipe-bpw4.5", compression) == CompressionSetting.from_config(budget)
    assert compression.to_config()["mmdit"] == {"mode": "recipe", "budget": {"bits_per_weight": 4.5}}
    with pytest.raises(PipelineError, match=r"^recipe-bpw4: no recipe of this content is configured"):
        configured_recipe("recipe-bpw4", compression)


def test_each_recipe_is_judged_by_its_own_bar_fixed_in_the_config_else_the_palettes_bar():
    from sd3coreml.compress.settings import recipe_bars

    own = CompressionSetting.from_config({"mode": "recipe", "budget": {"bits_per_weight": 4}, "min_psnr_db": 31})
    plain = CompressionSetting.from_config({"mode": "recipe", "budget": {"bytes": 1000}})
    uniform = CompressionSetting.from_config({"mode": "palettize", "nbits": 4})
    thresholds = {"palettized": 25}
    settings = [("a", own), ("b", plain), ("c", uniform)]
    assert recipe_bars(settings, thresholds) == {"recipe-bpw4": 31.0, "recipe-bytes1000": 25}
    assert own.to_config() == {"mode": "recipe", "budget": {"bits_per_weight": 4}, "min_psnr_db": 31.0}
    again = CompressionSetting.from_config({"mode": "recipe", "budget": {"bits_per_weight": 4}, "min_psnr_db": 30})
    with pytest.raises(PipelineError, match=r"^config key 'd': recipe-bpw4 has the bar 30 dB here and 31 dB at 'a'"):
        recipe_bars([*settings, ("d", again)], thresholds)
    with pytest.raises(PipelineError, match=r"^config key 'k.min_psnr_db' is 'high'; give the recipe's bar in dB"):
        CompressionSetting.from_config({"mode": "recipe", "budget": {"bytes": 1}, "min_psnr_db": "high"}, "k")
