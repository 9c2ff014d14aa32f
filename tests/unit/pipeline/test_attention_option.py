"""The attention option: where it may be set, how it names its artifacts, what it plans.

The default (joint) keeps every path, argument and manifest entry it had; a split block range
is an artifact of its own, with a joint twin it is held against.
"""

from types import SimpleNamespace

import pytest
import yaml
from harness import REPO

from sd3coreml.commands.main import main
from sd3coreml.compress.settings import FolderCompression
from sd3coreml.errors import PipelineError
from sd3coreml.pipeline import jobs
from sd3coreml.pipeline.artifacts import ATTENTION_WILDCARD, Artifacts, block_range_name, block_range_of
from sd3coreml.release.manifest import entry_settings
from sd3coreml.stages import ATTENTIONS, JOINT, SPLIT_HEADS, stage_ranges, with_attention
from sd3coreml.sweep.plan import plan_sweep

INT8 = {"mode": "linear_symmetric", "nbits": 8, "granularity": "per_channel"}
CONFIG = {"output_root": "results/x", "conversion_target": "iOS18", "latent_size": [16, 16], "batch_size": 1,
          "compiler": {"deployment_target": "18.2"},
          "compression": {"mmdit": INT8, "text_encoders": {"mode": "palettize", "nbits": 6, "granularity": "per_tensor"}}}  # fmt: skip
STAGE = "MultiModalDiffusionTransformerStage{}"


def demo_ranges(value=JOINT):
    return with_attention(stage_ranges([1, 2, 2], 5), value, "models.4step.attention")


def test_the_default_keeps_its_names_and_a_split_range_is_named_apart():
    joint, split = demo_ranges(), demo_ranges(SPLIT_HEADS)
    assert [block_range_name(r) for r in joint] == ["blocks0-1", "blocks1-3", "blocks3-5_head"]
    assert [block_range_name(r) for r in split] == ["blocks0-1.split_heads", "blocks1-3.split_heads",
                                                    "blocks3-5_head.split_heads"]  # fmt: skip
    assert all(block_range_of(block_range_name(r)) == r for r in joint + split)
    assert block_range_of("blocks0-1.fp16") is None

    art = Artifacts.of(CONFIG)
    joint_folder, split_folder = art.folder_packages("4step", joint), art.folder_packages("4step", split)
    stage = STAGE.format(3)
    assert (
        joint_folder[stage]
        == "results/x/mmdit/4step/iOS18/latent16x16/blocks3-5_head.int8_linear_symmetric_per_channel.mlpackage"
    )
    assert split_folder[stage] == joint_folder[stage].replace("_head.", "_head.split_heads.")
    # Stage0 and the rest of the folder hold no attention: the same packages either way.
    assert {k: v for k, v in split_folder.items() if "Stage" not in k or k == STAGE.format(0)} == {
        k: v for k, v in joint_folder.items() if "Stage" not in k or k == STAGE.format(0)}  # fmt: skip
    assert art.attention_checks("4step", joint) == []
    assert art.attention_checks("4step", split)[2] == art.against_joint(split_folder[stage]) == (
        "results/x/fidelity/mmdit/4step/iOS18/latent16x16/"
        "blocks3-5_head.split_heads.int8_linear_symmetric_per_channel.against_joint.json")  # fmt: skip


def test_the_conversion_gets_the_attention_only_when_it_is_not_the_default():
    wildcards = {"model": "4step", "start": "0", "end": "1", "head": "", "height": "16", "width": "16"}
    assert jobs.attention_args({**wildcards, "attention": ""}) == ""
    assert jobs.attention_args({"model": "4step"}) == ""
    assert jobs.attention_args({**wildcards, "attention": ".split_heads"}) == "--attention split_heads"
    assert ATTENTION_WILDCARD == r"(\.split_heads)?"


def test_per_stage_attention_and_its_refusals():
    chosen = demo_ranges({STAGE.format(2): SPLIT_HEADS})
    assert [r.attention for r in chosen] == [JOINT, SPLIT_HEADS, JOINT]
    for entry, why in [(STAGE.format(0), "is the input stage (patch and text embedding) and holds no attention"),
                       ("MultiModalDiffusionTransformerConditioning", "holds no attention"),
                       (STAGE.format(4), "names no block-range stage of this model")]:  # fmt: skip
        with pytest.raises(PipelineError) as error:
            demo_ranges({entry: SPLIT_HEADS})
        assert str(error.value).startswith(f"config key 'models.4step.attention.{entry}'") and why in str(error.value)
        assert "\n" not in str(error.value)
    with pytest.raises(PipelineError, match=r"^config key 'models.4step.attention' is 'split'; use one of joint"):
        demo_ranges("split")


def test_the_pieces_without_attention_refuse_it_in_one_line(capsys):
    common = ["--weights", "w.safetensors", "--config", "c.json", "--out", "x.mlpackage", "--attention", SPLIT_HEADS]
    assert main(["convert-input-stage", "--latent", "16", "16", *common]) == 1
    assert main(["convert-conditioning", *common]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        (
            "error: --attention split_heads: MultiModalDiffusionTransformerStage0 is the input stage (patch and text "
            "embedding) and holds no attention; only convert-block-range takes --attention"
        ),
        (
            "error: --attention split_heads: MultiModalDiffusionTransformerConditioning is the timestep and "
            "pooled-text embedding and holds no attention; only convert-block-range takes --attention"
        ),
    ]


def test_the_schema_offers_exactly_the_attentions_the_code_knows():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    option = schema["properties"]["models"]["additionalProperties"]["properties"]["attention"]["oneOf"]
    assert option[0]["enum"] == option[1]["additionalProperties"]["enum"] == list(ATTENTIONS)
    assert schema["properties"]["fidelity"]["properties"]["attention_min_psnr_db"]["default"] == 60


def test_a_manifest_names_the_attention_only_of_split_stages():
    config = {**CONFIG, "components": "c"}
    compression = FolderCompression.from_config(config["compression"])
    joint = entry_settings(demo_ranges(), config, compression)
    split = entry_settings(demo_ranges({STAGE.format(2): SPLIT_HEADS}), config, compression)
    assert all("attention" not in settings for settings in joint.values())
    assert split[STAGE.format(2)]["attention"] == SPLIT_HEADS
    assert {k: v for k, v in split.items() if k != STAGE.format(2)} == {
        k: v for k, v in joint.items() if k != STAGE.format(2)
    }


def test_a_sweep_crosses_attentions_with_layouts_and_modes(tmp_path):
    def plan(entry):
        path = tmp_path / "sweeps.yaml"
        path.write_text(yaml.safe_dump({"mine": {"model": "4step", "layouts": [[1, 2, 2], [1, 4]],
                                                 "compression": {"int8": INT8}, **entry}}))  # fmt: skip
        config = {"sweep": {"name": "mine", "file": str(path)}, "conversion_target": "iOS18"}
        return plan_sweep(config, {"4step": SimpleNamespace(shape=SimpleNamespace(depth=5))})

    assert plan({}).attentions == (JOINT,)
    sweep = plan({"attentions": [JOINT, SPLIT_HEADS]})
    rows = Artifacts.of(CONFIG).sweep_rows(sweep, on_macos=False)
    assert [(row["layout"], row["attention"]) for row in rows] == [
        ("1-2-2", JOINT), ("1-2-2", SPLIT_HEADS), ("1-4", JOINT), ("1-4", SPLIT_HEADS)]  # fmt: skip
    split_head_stage = rows[1]["stages"][3]
    assert split_head_stage["package"].endswith(
        "blocks3-5_head.split_heads.int8_linear_symmetric_per_channel.mlpackage"
    )
    assert split_head_stage["joint_fp16_package"] == rows[0]["stages"][3]["fp16_package"]
    assert [path.rsplit("/", 1)[1] for path in split_head_stage["against_joint"]] == [
        "blocks3-5_head.split_heads.fp16.against_joint.json",
        "blocks3-5_head.split_heads.int8_linear_symmetric_per_channel.against_joint.json"]  # fmt: skip
    # Stage0 holds no attention: one package, no twin, in both rows.
    assert rows[0]["stages"][0] == rows[1]["stages"][0] and "against_joint" not in rows[1]["stages"][0]
    inputs = Artifacts.of(CONFIG).sweep_inputs(sweep, on_macos=False)
    # Four split block ranges (the layouts share blocks0-1), each against its twin at fp16 and int8.
    assert len(inputs["against_joint"]) == 4 * 2
    assert rows[0]["stages"][3]["package"] in inputs["packages"]
    for entry, message in [({"attentions": "split_heads"}, "mine.attentions is 'split_heads'; give a list"),
                           ({"attentions": [JOINT, JOINT]}, "mine.attentions names one attention twice"),
                           ({"attentions": ["split"]}, "mine.attentions is 'split'; use one of joint, split_heads")]:  # fmt: skip
        with pytest.raises(PipelineError, match=message):
            plan(entry)
