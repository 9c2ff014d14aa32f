"""Convert the MMDiT pieces (Conditioning, Stage0, block ranges) to fp16 `.mlpackage`s.

Each function reads only its own tensors from the weights file, so a job's memory follows
its block range, not the whole transformer.
"""

from pathlib import Path

from sd3coreml.checkpoint import check_header_matches_config, load_transformer_config
from sd3coreml.convert import TensorSpec, convert_module, random_inputs
from sd3coreml.geometry import MMDiTShape
from sd3coreml.mmdit import build_block_range, build_conditioning, build_input_stage
from sd3coreml.package import save_package

# Joint blocks hold no shape constants, so a small trace converts to the same program as a
# full-size one (DESIGN section 2) at a fraction of the fp32 forward's cost.
TRACE_IMAGE_TOKENS, TRACE_TEXT_TOKENS = 16, 8


def load_shape(weights: Path, config_path: Path, latent_size: tuple[int, int]) -> MMDiTShape:
    config = load_transformer_config(config_path)
    check_header_matches_config(weights, config, config_path)
    return MMDiTShape.from_config(config, *latent_size)


def body_specs(shape: MMDiTShape) -> list[TensorSpec]:
    return [
        TensorSpec("latent_image_embeddings", (1, shape.image_tokens, shape.width)),
        TensorSpec("token_level_text_embeddings", (1, shape.text_tokens, shape.width)),
        TensorSpec("modulation_inputs", (1, shape.width)),
    ]


def convert_conditioning(weights: Path, config_path: Path, target: str, out: Path) -> None:
    shape = load_shape(weights, config_path, (0, 0))
    module = build_conditioning(shape, weights)
    inputs = [
        TensorSpec("pooled_text_embeddings", (1, shape.pooled_projection_dim, 1, 1)),
        TensorSpec("timestep", (1,)),
    ]
    mlmodel = convert_module(module, inputs, ["modulation_inputs"], target)
    save_package(mlmodel, Path(out), {"sd3coreml.artifact": "MMDiT conditioning"})


def convert_input_stage(weights: Path, config_path: Path, latent_size, target: str, out: Path) -> None:
    shape = load_shape(weights, config_path, latent_size)
    module = build_input_stage(shape, weights)
    inputs = [
        TensorSpec("latent_image_embeddings", (1, shape.in_channels, shape.latent_height, shape.latent_width)),
        TensorSpec("token_level_text_embeddings", (1, shape.joint_attention_dim, 1, shape.text_tokens)),
        TensorSpec("modulation_inputs", (1, shape.width)),
    ]
    outputs = ["latent_image_embeddings_out", "token_level_text_embeddings_out"]
    mlmodel = convert_module(module, inputs, outputs, target)
    save_package(mlmodel, Path(out), {"sd3coreml.artifact": "MMDiT input stage"})


def convert_block_range(weights: Path, config_path: Path, start: int, end: int, latent_size, target: str, out: Path):
    """Blocks [start, end); the range ending the transformer also gets the head (noise_pred)."""
    shape = load_shape(weights, config_path, latent_size)
    module = build_block_range(shape, start, end, weights)
    if module.has_head:
        outputs, example = ["noise_pred"], None
    else:
        outputs = ["latent_image_embeddings_out", "token_level_text_embeddings_out"]
        example = random_inputs(
            [(1, TRACE_IMAGE_TOKENS, shape.width), (1, TRACE_TEXT_TOKENS, shape.width), (1, shape.width)]
        )
    mlmodel = convert_module(module, body_specs(shape), outputs, target, example=example)
    save_package(mlmodel, Path(out), {"sd3coreml.artifact": f"MMDiT blocks {start}-{end}"})
