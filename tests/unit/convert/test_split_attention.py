"""The attention split per head computes diffusers' joint attention: in PyTorch to fp32 rounding
(SD3 and SD3.5's qk norms and second attention), and as a converted package against its joint
twin to fp16 rounding, at the bar the pipeline holds every split package to."""

import json

import pytest
import torch
from harness import REPO

from sd3coreml.convert.mmdit import ATTENTION_KEY, convert_block_range
from sd3coreml.convert.mmdit_modules import build_block_range
from sd3coreml.convert.package import read_spec
from sd3coreml.convert.split_attention import SplitHeadsJointAttnProcessor, split_attention_per_head
from sd3coreml.inputs.geometry import MMDiTShape
from sd3coreml.stages import JOINT, SPLIT_HEADS
from sd3coreml.synthetic.checkpoints import write_synthetic_transformer

PINNED = {"tiny": "sd3-tiny.json", "sd3.5-tiny": "sd3.5-tiny.json"}
# The bar config/schema.yaml sets for fidelity.attention_min_psnr_db, fixed before measuring.
ATTENTION_MIN_PSNR_DB = 60


@pytest.fixture(scope="module")
def transformers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("split_attention")
    made = {}
    for preset, pinned in PINNED.items():
        weights = folder / f"{preset}.safetensors"
        write_synthetic_transformer(preset, 3, weights, folder / f"{preset}.json")
        made[preset] = (weights, REPO / "config" / "transformers" / pinned)
    return made


def test_split_blocks_compute_the_joint_attention_in_fp32(transformers):
    # SD3.5's whole depth in one range: qk norms in every attention, the second image attention
    # of blocks 0 and 1, and the head's context_pre_only block. (SD3's plain blocks: below.)
    weights, config = transformers["sd3.5-tiny"]
    shape = MMDiTShape.from_config(json.loads(config.read_text()), 16, 16)
    joint = build_block_range(shape, 0, shape.depth, weights)
    split = split_attention_per_head(build_block_range(shape, 0, shape.depth, weights))
    processors = [module.processor for module in split.modules() if hasattr(module, "processor")]
    assert len(processors) == shape.depth + len(shape.dual_attention_layers)
    assert all(isinstance(processor, SplitHeadsJointAttnProcessor) for processor in processors)

    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(*size, generator=generator) for size in ((1, 64, 64), (1, 154, 64), (1, 64))]
    with torch.no_grad():
        expected, got = joint(*inputs), split(*inputs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_split_package_equals_its_joint_twin_within_fp16(transformers, tmp_path):
    from sd3coreml.sweep.program_stats import attention_ops, largest_attention_scores, program_stats
    from sd3coreml.verify.attention_check import check_against_joint, under_the_bar

    weights, config = transformers["tiny"]
    packages = {}
    for attention in (JOINT, SPLIT_HEADS):
        packages[attention] = tmp_path / f"blocks0-1.{attention}.fp16.mlpackage"
        convert_block_range(weights, config, 0, 1, (16, 16), "iOS18", packages[attention], attention)

    record = check_against_joint(packages[SPLIT_HEADS], packages[JOINT], 0, ATTENTION_MIN_PSNR_DB, tmp_path / "a.json")
    figures = {name: output["psnr_db"] for name, output in record["executor"].items()}
    assert record["passed"] and set(figures) == {"latent_image_embeddings_out", "token_level_text_embeddings_out"}
    # Equal to fp16 rounding, not bit for bit: the two programs do differ.
    assert all(isinstance(psnr, float) and ATTENTION_MIN_PSNR_DB <= psnr for psnr in figures.values()), figures

    metadata = {
        attention: dict(read_spec(path).description.metadata.userDefined) for attention, path in packages.items()
    }
    assert metadata[SPLIT_HEADS][ATTENTION_KEY] == SPLIT_HEADS and ATTENTION_KEY not in metadata[JOINT]
    # The cost: per head 3 slices, 2 matmuls and a softmax where joint has one fused op (17 ops with
    # the projections' reshapes and the joint concatenation), and the scores of one head at a time
    # instead of all 4 heads' (4 x 218 x 218 fp16). docs/ATTENTION.md quotes these counts.
    ops = {attention: attention_ops(path) for attention, path in packages.items()}
    assert ops == {JOINT: {"transformer_blocks_0_attn": 17}, SPLIT_HEADS: {"transformer_blocks_0_attn": 13 + 6 * 4}}
    extra = program_stats(packages[SPLIT_HEADS]).compute_ops - program_stats(packages[JOINT]).compute_ops
    assert extra == 13 + 6 * 4 - 17
    assert largest_attention_scores(packages[JOINT]) == 4 * 218 * 218 * 2
    assert largest_attention_scores(packages[SPLIT_HEADS]) == 218 * 218 * 2

    # The same figures under a bar they do not reach: one line naming the output, its figure and the bar.
    failure = under_the_bar(packages[SPLIT_HEADS], packages[JOINT], figures, max(figures.values()) + 1)
    assert failure.startswith("blocks0-1.split_heads.fp16.mlpackage against its joint twin") and "\n" not in failure
    assert all(f"{name} {psnr:.2f} dB" in failure for name, psnr in figures.items())
