"""The client app's hard-coded sizes (MobileDiffuser bfe2f28) against the pinned config, the presets
and the contracts kept in tests/contract."""

import json

from harness import REPO
from package_contract import interfaces, load_contract

from sd3coreml.contract import APP_CLIP_HIDDEN_WIDTH, APP_JOINT_WIDTH, APP_POOLED_WIDTH
from sd3coreml.release.client import interface_problems
from sd3coreml.synthetic.presets import get_preset


def test_the_pinned_sd3_medium_config_and_preset_have_the_apps_sizes():
    config = json.loads((REPO / "config" / "transformers" / "sd3-medium.json").read_text())
    assert (config["joint_attention_dim"], config["pooled_projection_dim"]) == (APP_JOINT_WIDTH, APP_POOLED_WIDTH)
    preset = get_preset("sd3-medium")
    assert preset.transformer.diffusers_config()["joint_attention_dim"] == APP_JOINT_WIDTH
    assert preset.clip_l.hidden_size + preset.clip_g.hidden_size == APP_CLIP_HIDDEN_WIDTH == 768 + 1280
    assert preset.clip_l.projection_dim + preset.clip_g.projection_dim == APP_POOLED_WIDTH


def test_the_full_scale_contract_is_loadable_and_the_demos_is_not_for_its_widths():
    assert interface_problems(interfaces(load_contract("sd3_medium_packages.yaml"))) == []
    problems = interface_problems(interfaces(load_contract("demo_packages.yaml")))
    assert "CLIP-L + CLIP-G hidden width is 160, the app's 2048" in problems
    assert "Stage0's token_level_text_embeddings is [1, 192, 1, 154], the app's [1, 4096, 1, 154]" in problems


def test_a_second_input_or_output_is_named():
    contract = interfaces(load_contract("sd3_medium_packages.yaml"))
    inputs, outputs = contract["VAEDecoder"]
    contract["VAEDecoder"] = ({**inputs, "scale": [1]}, outputs)
    last_inputs, last_outputs = contract["MultiModalDiffusionTransformerStage6"]
    contract["MultiModalDiffusionTransformerStage6"] = (last_inputs, {**last_outputs, "extra": [1]})
    assert interface_problems(contract) == [
        "VAEDecoder has 2 inputs; the app feeds only the first",
        "MultiModalDiffusionTransformerStage6 has 2 outputs; the app reads only the first",
    ]
