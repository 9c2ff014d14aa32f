"""Convert the MMDiT pieces (Conditioning, Stage0, block ranges) to fp16 `.mlpackage`s.

Each function reads only its own tensors from the weights file, so a job's memory follows
its block range, not the whole transformer.
"""

from pathlib import Path

import torch

from sd3coreml.contract import (
    LATENT_IMAGE_EMBEDDINGS,
    MODULATION_INPUTS,
    NOISE_PRED,
    POOLED_TEXT_EMBEDDINGS,
    STAGE_OUTPUTS,
    TIMESTEP,
    TOKEN_LEVEL_TEXT_EMBEDDINGS,
)
from sd3coreml.convert.conversion import Float16Inputs, TensorSpec, convert_module, fp16_except_sinusoids, random_inputs
from sd3coreml.convert.mmdit_modules import build_block_range, build_conditioning, build_input_stage
from sd3coreml.convert.package import ARTIFACT_KEY, block_range_label, save_package
from sd3coreml.inputs.checkpoint import check_header_matches_config, load_transformer_config
from sd3coreml.inputs.geometry import MMDiTShape
from sd3coreml.stages import JOINT, SPLIT_HEADS, check_attention

# Joint blocks hold no shape constants, so a trace on one row of patches and a few text
# tokens converts to the same program as a full-size one (docs/TOOL_FACTS.md, "Tracing and
# conversion") at a fraction of the forward's cost.
TRACE_TEXT_TOKENS = 8
# A package's metadata key naming its attention where it is not the default (joint).
ATTENTION_KEY = "sd3coreml.attention"


def load_shape(weights: Path, config_path: Path, latent_size: tuple[int, int]) -> MMDiTShape:
    config = load_transformer_config(config_path)
    check_header_matches_config(weights, config, config_path)
    return MMDiTShape.from_config(config, *latent_size)


def body_specs(shape: MMDiTShape) -> list[TensorSpec]:
    return [
        TensorSpec(LATENT_IMAGE_EMBEDDINGS, (1, shape.image_tokens, shape.width)),
        TensorSpec(TOKEN_LEVEL_TEXT_EMBEDDINGS, (1, shape.text_tokens, shape.width)),
        TensorSpec(MODULATION_INPUTS, (1, shape.width)),
    ]


def convert_conditioning(weights: Path, config_path: Path, target: str, out: Path) -> None:
    shape = load_shape(weights, config_path, (0, 0))
    # Traced in fp32 so that the timestep's sinusoid can stay fp32 (a few ops of a small model).
    module = build_conditioning(shape, weights, torch.float32)
    inputs = [
        TensorSpec(POOLED_TEXT_EMBEDDINGS, (1, shape.pooled_projection_dim, 1, 1)),
        TensorSpec(TIMESTEP, (1,)),
    ]
    mlmodel = convert_module(module, inputs, [MODULATION_INPUTS], target, compute_precision=fp16_except_sinusoids())
    save_package(mlmodel, Path(out), {ARTIFACT_KEY: "MMDiT conditioning"})


def convert_input_stage(weights: Path, config_path: Path, latent_size, target: str, out: Path) -> None:
    shape = load_shape(weights, config_path, latent_size)
    module = Float16Inputs(build_input_stage(shape, weights, torch.float16))
    inputs = [
        TensorSpec(LATENT_IMAGE_EMBEDDINGS, (1, shape.in_channels, shape.latent_height, shape.latent_width)),
        TensorSpec(TOKEN_LEVEL_TEXT_EMBEDDINGS, (1, shape.joint_attention_dim, 1, shape.text_tokens)),
        TensorSpec(MODULATION_INPUTS, (1, shape.width)),
    ]
    mlmodel = convert_module(module, inputs, list(STAGE_OUTPUTS), target)
    save_package(mlmodel, Path(out), {ARTIFACT_KEY: "MMDiT input stage"})


def convert_block_range(
    weights: Path, config_path: Path, start: int, end: int, latent_size, target: str, out: Path, attention=JOINT
):
    """Blocks [start, end); the range ending the transformer also gets the head (noise_pred).
    `attention` SPLIT_HEADS computes each attention one head at a time (convert/split_attention.py)."""
    shape = load_shape(weights, config_path, latent_size)
    blocks = build_block_range(shape, start, end, weights, torch.float16)
    metadata = {ARTIFACT_KEY: block_range_label(start, end)}
    if check_attention(attention, "the block range's attention") == SPLIT_HEADS:
        from sd3coreml.convert.split_attention import split_attention_per_head

        blocks = split_attention_per_head(blocks)
        metadata[ATTENTION_KEY] = attention
    module = Float16Inputs(blocks)
    outputs = [NOISE_PRED] if module.module.has_head else list(STAGE_OUTPUTS)
    one_row = shape.latent_width // shape.patch_size
    example = random_inputs([(1, one_row, shape.width), (1, TRACE_TEXT_TOKENS, shape.width), (1, shape.width)])
    mlmodel = convert_module(module, body_specs(shape), outputs, target, example=example)
    save_package(mlmodel, Path(out), metadata)
