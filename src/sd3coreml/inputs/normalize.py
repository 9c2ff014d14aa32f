"""Accept an SD3 transformer in the original key layout by normalising it to diffusers' layout.

Stability's single-file checkpoints (`sd3_medium.safetensors`) name the MMDiT's tensors
`model.diffusion_model.joint_blocks.N.x_block.attn.qkv.weight` and so on, beside the text
encoders and the VAE; bare exports drop the `model.diffusion_model.` prefix. Every other
step reads diffusers' names (`transformer_blocks.N.attn.to_q.weight`), so one job converts
such a file once, with diffusers' own single-file conversion code, into a bare
diffusers-format safetensors file that is checked against the pinned config like any other.
The layout is decided from the tensor names alone and anything unrecognised is refused:
a wrong guess would convert into a model that runs and draws noise.
"""

import math
from pathlib import Path

from sd3coreml.atomic import written_atomically
from sd3coreml.errors import PipelineError
from sd3coreml.inputs.checkpoint import (
    SUPPORTED_TRANSFORMERS,
    check_architecture,
    check_tensor_table,
    compare_shapes,
    load_transformer_config,
    name_missing_family,
    read_tensor_table,
    save_safetensors,
    sd3_tensor_shapes,
)
from sd3coreml.inputs.original_layout import original_layout_state_dict

DIFFUSERS = "diffusers"
ORIGINAL = "original"
ORIGINAL_PREFIX = "model.diffusion_model."

# Recognised only to name them in the refusal; none of them is converted.
OTHER_ARCHITECTURES = (
    ("single_transformer_blocks.", "a Flux transformer (diffusers layout)"),
    ("double_blocks.", "a Flux transformer (original layout)"),
    ("single_blocks.", "a Flux transformer (original layout)"),
    ("down_blocks.", "a UNet (diffusers layout, SD 1.x/2.x/XL)"),
    ("input_blocks.", "a UNet (original layout, SD 1.x/2.x/XL)"),
    ("encoder.down.", "a VAE"),
    ("text_model.", "a CLIP text encoder"),
)
EXPECTED_LAYOUTS = (
    f"supported: {SUPPORTED_TRANSFORMERS}, in the diffusers layout (transformer_blocks.*) or the "
    "original layout (joint_blocks.*, optionally under model.diffusion_model.)"
)

# Bytes per element of safetensors dtypes, for the declared memory.
DTYPE_BYTES = {
    **dict.fromkeys(["F64", "I64", "U64"], 8),
    **dict.fromkeys(["F32", "I32", "U32"], 4),
    **dict.fromkeys(["F16", "BF16", "I16", "U16"], 2),
    **dict.fromkeys(["F8_E4M3", "F8_E5M2", "I8", "U8", "BOOL"], 1),
}
# Measured with `/usr/bin/time -v` (safetensors 0.8): peak RSS 0.41 GB on the tiny synthetic
# file (the torch and diffusers imports), 4.94 GiB on the 3.88 GiB sd3-medium one (1.27x).
BASE_MEMORY_MB = 1000
TRANSFORMER_MEMORY_FACTOR = 1.5


def _stored_names(weights: Path, table: dict) -> dict[str, str]:
    """{bare original name: name in the file} of the transformer's tensors in an original-layout file.

    With the prefix, the file's other tensors (text encoders, VAE) are not the transformer's
    and are left alone; without it, every tensor is.
    """
    if any(name.startswith(ORIGINAL_PREFIX) for name in table):
        return {name[len(ORIGINAL_PREFIX) :]: name for name in table if name.startswith(ORIGINAL_PREFIX)}
    return {name: name for name in table}


def _architecture_of(names) -> str:
    for name in sorted(names):
        bare = name.removeprefix(ORIGINAL_PREFIX)
        for prefix, what in OTHER_ARCHITECTURES:
            if bare.startswith(prefix):
                return f"{what}, e.g. {name}"
    sample = next(iter(sorted(names)), None)
    return f"tensors such as {sample}" if sample else "no tensors"


def detect_layout(weights: Path) -> str:
    """`"diffusers"` or `"original"`, from the safetensors header; anything else is refused.

    diffusers: `transformer_blocks.*` names; original: `joint_blocks.*`, bare or under
    `model.diffusion_model.`. A file mixing the two, or holding another architecture,
    raises PipelineError.
    """
    weights = Path(weights)
    names = list(read_tensor_table(weights))
    diffusers = any(name.startswith("transformer_blocks.") for name in names)
    single = any(name.startswith("single_transformer_blocks.") for name in names)
    bare = any(name.startswith("joint_blocks.") for name in names)
    prefixed = any(name.startswith(ORIGINAL_PREFIX + "joint_blocks.") for name in names)
    if diffusers and not single and not (bare or prefixed):
        return DIFFUSERS
    if (bare or prefixed) and not diffusers:
        if bare and prefixed:
            raise PipelineError(
                f"{weights}: holds joint_blocks.* both with and without the {ORIGINAL_PREFIX} prefix; "
                "export one transformer per file"
            )
        return ORIGINAL
    if diffusers and (bare or prefixed):
        raise PipelineError(
            f"{weights}: mixes the diffusers (transformer_blocks.*) and original (joint_blocks.*) layouts; "
            "export one transformer per file"
        )
    raise PipelineError(f"{weights}: not an SD3-family transformer ({_architecture_of(names)}); {EXPECTED_LAYOUTS}")


def expected_shapes(transformer_config: dict) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(diffusers, original) tensor tables of diffusers' `SD3Transformer2DModel` for this config."""
    import torch
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        state = SD3Transformer2DModel(**transformer_config).state_dict()
        original = original_layout_state_dict(state)
    return (
        {name: tuple(tensor.shape) for name, tensor in state.items()},
        {name: tuple(tensor.shape) for name, tensor in original.items()},
    )


def check_original_header_matches_config(weights_path: Path, config: dict, config_path: Path) -> None:
    """Cheap parse-time check of an original-layout file's depth and widths (no torch import)."""
    weights_path = Path(weights_path)
    table = read_tensor_table(weights_path)
    shapes = {bare: table[stored]["shape"] for bare, stored in _stored_names(weights_path, table).items()}
    name_missing_family(weights_path, config_path, shapes, sd3_tensor_shapes(config))
    width = config["num_attention_heads"] * config["attention_head_dim"]
    patch = config["patch_size"]
    blocks = sorted({int(name.split(".")[1]) for name in shapes if name.startswith("joint_blocks.")})
    expected = {
        "joint_blocks numbered 0..depth-1": (blocks, list(range(config["num_layers"]))),
        "x_embedder.proj.weight": (shapes.get("x_embedder.proj.weight"), (width, config["in_channels"], patch, patch)),
        "context_embedder.weight": (
            shapes.get("context_embedder.weight"),
            (config["caption_projection_dim"], config["joint_attention_dim"]),
        ),
        "y_embedder.mlp.0.weight": (shapes.get("y_embedder.mlp.0.weight"), (width, config["pooled_projection_dim"])),
        "pos_embed": (shapes.get("pos_embed"), (1, config["pos_embed_max_size"] ** 2, width)),
    }
    compare_shapes(weights_path, config_path, expected)


def _transformer_bytes(table: dict, stored: dict[str, str]) -> int:
    return sum(math.prod(table[name]["shape"]) * DTYPE_BYTES.get(table[name]["dtype"], 8) for name in stored.values())


def normalized_memory_mb(weights: Path) -> int:
    """Memory to declare for normalising `weights`, from its header: 1.5x the transformer's tensors plus the imports.

    The job holds every tensor once, plus the qkv and final-norm copies the conversion makes
    and safetensors' write buffers. Only the transformer's tensors count: a single file's
    text encoders and VAE are never loaded.
    """
    weights = Path(weights)
    table = read_tensor_table(weights)
    transformer_mb = _transformer_bytes(table, _stored_names(weights, table)) / 2**20
    return BASE_MEMORY_MB + math.ceil(TRANSFORMER_MEMORY_FACTOR * transformer_mb)


def normalize_transformer(original: Path, config_path: Path, out: Path) -> None:
    """Convert an original-layout SD3 transformer to a bare diffusers-format safetensors file.

    Only the transformer's tensors are read, in their stored dtype. The file is checked
    against the config before anything loads, and the converted tensors against diffusers'
    `SD3Transformer2DModel` (names and shapes) before anything is written.
    """
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers
    from safetensors import safe_open

    original, config_path, out = Path(original), Path(config_path), Path(out)
    layout = detect_layout(original)
    transformer_config = load_transformer_config(config_path)
    check_architecture(transformer_config, config_path)
    if layout != ORIGINAL:
        raise PipelineError(
            f"{original}: already in the diffusers layout (transformer_blocks.*); "
            "use it as the model's weights directly"
        )
    table = read_tensor_table(original)
    stored = _stored_names(original, table)
    diffusers_shapes, original_shapes = expected_shapes(transformer_config)
    found = {bare: table[name]["shape"] for bare, name in stored.items()}
    check_tensor_table(original, config_path, found, original_shapes, "original-layout tensors")

    with safe_open(str(original), framework="pt") as handle:
        checkpoint = {name: handle.get_tensor(name) for name in stored.values()}
    try:
        converted = convert_sd3_transformer_checkpoint_to_diffusers(checkpoint)
    except KeyError as error:
        raise PipelineError(
            f"{original}: diffusers' SD3 conversion found no tensor {error.args[0]}; is the file complete?"
        ) from None
    if checkpoint:
        raise PipelineError(
            f"{original}: diffusers' SD3 conversion left {len(checkpoint)} tensors unused, e.g. "
            f"{sorted(checkpoint)[:3]}; supported: {SUPPORTED_TRANSFORMERS}"
        )
    converted_shapes = {name: tuple(tensor.shape) for name, tensor in converted.items()}
    check_tensor_table(original, config_path, converted_shapes, diffusers_shapes, "converted tensors")
    with written_atomically(out) as temporary:
        save_safetensors(converted, temporary)
