"""Deliberately broken artifacts must fail verification, and by name; their intact twins pass.

Each break is one a conversion could make without any error: a weight scaled, a weight
transposed, the last hidden state read in place of the penultimate one, two stages swapped
in a folder.
"""

import re

import pytest
import torch
from harness import copy_tree
from safetensors.torch import load_file

from sd3coreml.convert.conversion import TensorSpec, convert_module
from sd3coreml.convert.mmdit import convert_block_range
from sd3coreml.convert.package import save_package
from sd3coreml.convert.text_encoder import TextEncoderForApp, example_token_ids, load_text_encoder
from sd3coreml.errors import PipelineError
from sd3coreml.inputs.checkpoint import save_safetensors
from sd3coreml.verify.end_to_end.check import end_to_end_check
from sd3coreml.verify.measure import measure_packages
from sd3coreml.verify.package_checks import block_range_check, text_encoder_check
from sd3coreml.verify.report import write_report

BARS = {"fp16": 60, "int8": 35, "int4": 25, "palettized": 25}
TEXT_ENCODER_ENTRY = "TextEncoder"
WEIGHT = "transformer_blocks.1.attn.to_q.weight"


def demo_paths(workdir):
    root = workdir / "results" / "demo"
    return {
        "weights": root / "checkpoints" / "tiny-seed4.safetensors",
        "config": workdir / "config" / "transformers" / "sd3-tiny.json",
        "components": root / "checkpoints" / "tiny-components-seed0",
        "folder": root / "coremlsd3_4step_packages",
    }


def verify(package, check, tmp_path, entry):
    measure_packages([package], check, 0, tmp_path / "measurement.json")
    write_report({entry: tmp_path / "measurement.json"}, BARS, tmp_path / "fidelity.json", tmp_path / "fidelity.md")


def converted_with_changed_weight(paths, tmp_path, change):
    tensors = load_file(str(paths["weights"]))
    tensors[WEIGHT] = change(tensors[WEIGHT]).contiguous()
    save_safetensors(tensors, tmp_path / "changed.safetensors")
    package = tmp_path / "blocks1-3.fp16.mlpackage"
    convert_block_range(tmp_path / "changed.safetensors", paths["config"], 1, 3, (16, 16), "iOS18", package)
    return package


@pytest.mark.parametrize(
    "change", [lambda weight: weight * 1.25, lambda weight: weight.T], ids=["scaled", "transposed"]
)
def test_a_wrong_weight_in_a_stage_fails_verification(demo_build, tmp_path, change):
    paths = demo_paths(demo_build)
    package = converted_with_changed_weight(paths, tmp_path, change)
    check = block_range_check(paths["weights"], paths["config"], 1, 3, (16, 16), 0)
    with pytest.raises(PipelineError, match=r"blocks1-3\.fp16\.mlpackage \(MultiModalDiffusionTransformerStage2\)"):
        verify(package, check, tmp_path, "MultiModalDiffusionTransformerStage2")


def test_the_intact_stage_passes(demo_build, tmp_path):
    paths = demo_paths(demo_build)
    package = converted_with_changed_weight(paths, tmp_path, lambda weight: weight)
    verify(package, block_range_check(paths["weights"], paths["config"], 1, 3, (16, 16), 0), tmp_path, "Stage2")


class LastHiddenState(TextEncoderForApp):
    def forward(self, input_ids):
        outputs = self.encoder(input_ids=input_ids.to(torch.int32), output_hidden_states=True)
        return outputs.hidden_states[-1], outputs.text_embeds


def test_the_last_hidden_state_in_place_of_the_penultimate_fails(demo_build, tmp_path):
    encoder_dir = demo_paths(demo_build)["components"] / "text_encoder"
    module = LastHiddenState(load_text_encoder(encoder_dir))
    inputs, outputs = [TensorSpec("input_ids", (1, 77))], ["hidden_embeds", "pooled_outputs"]
    mlmodel = convert_module(module, inputs, outputs, "iOS18", example=(example_token_ids(),))
    package = tmp_path / "TextEncoder.fp16.mlpackage"
    save_package(mlmodel, package)
    with pytest.raises(PipelineError, match=r"TextEncoder\.fp16\.mlpackage \(TextEncoder\) output 'hidden_embeds'"):
        verify(package, text_encoder_check(encoder_dir, 0), tmp_path, TEXT_ENCODER_ENTRY)


def test_two_stages_swapped_in_a_folder_fail_end_to_end(demo_build, tmp_path):
    paths = demo_paths(demo_build)
    folder = tmp_path / "coremlsd3_4step_packages"
    copy_tree(paths["folder"], folder)
    first, second = (folder / f"MultiModalDiffusionTransformerStage{index}.mlpackage" for index in (1, 2))
    first.rename(tmp_path / "aside.mlpackage")
    second.rename(first)
    (tmp_path / "aside.mlpackage").rename(second)
    check = end_to_end_check(folder, paths["weights"], paths["config"], paths["components"], 4, 0, 30.0)
    assert re.match(r"end-to-end: MultiModalDiffusionTransformerStage1\.mlpackage at step 0", check.failure)
