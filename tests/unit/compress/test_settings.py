"""The compression setting as one value: config, slug, flags, argparse and the manifest agree."""

import itertools
import re
import shlex
from pathlib import Path

import pytest
import yaml

from sd3coreml.commands.main import build_parser
from sd3coreml.compress.settings import (
    GRANULARITIES,
    MODES,
    NBITS,
    SINGLE_THREAD_SLUG,
    SLUG_PATTERN,
    TENSOR_PALETTE_SLUG,
    CompressionSetting,
    FolderCompression,
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
            yield {"mode": mode, "nbits": nbits, "granularity": granularity, **sizes}
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
    assert PROPERTIES["mode"]["enum"] == ["none", *MODES]
    assert sorted(PROPERTIES["nbits"]["enum"]) == sorted({nbits for widths in NBITS.values() for nbits in widths})
    assert sorted(PROPERTIES["granularity"]["enum"]) == sorted({g for offered in GRANULARITIES.values() for g in offered})


def test_every_buildable_setting_round_trips_through_slug_flags_argparse_and_config():
    settings = buildable()
    # none, int8 x3, int4 x3, palettes 3 widths x 2 granularities
    assert len(settings) == 1 + 3 + 3 + 3 * 2
    for setting in settings:
        assert CompressionSetting.from_slug(setting.slug) == setting
        assert CompressionSetting.from_config(setting.to_config()) == setting
        if setting.mode == "none":
            assert setting.slug == "fp16" and setting.precision == "fp16"
            continue
        assert re.fullmatch(SLUG_PATTERN, setting.slug), setting.slug
        assert bool(re.fullmatch(TENSOR_PALETTE_SLUG, setting.slug)) == setting.uses_threads
        assert bool(re.fullmatch(SINGLE_THREAD_SLUG, setting.slug)) != setting.uses_threads
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
