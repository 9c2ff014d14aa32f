"""Test helpers for transformer files: diffusers' own tensor table, a full check against it, and
files in Stability's original layout (the pipeline itself reads them, never writes them)."""

from pathlib import Path

from sd3coreml.atomic import written_atomically
from sd3coreml.errors import PipelineError
from sd3coreml.inputs.checkpoint import (
    check_layout,
    check_tensor_table,
    load_transformer_config,
    read_tensor_table,
    save_safetensors,
)
from sd3coreml.inputs.normalize import DIFFUSERS, ORIGINAL_PREFIX, detect_layout
from sd3coreml.inputs.original_layout import original_layout_state_dict


def expected_tensor_shapes(transformer_config: dict) -> dict[str, tuple]:
    """The tensor table diffusers' `SD3Transformer2DModel` has for this config (meta device)."""
    import torch
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        model = SD3Transformer2DModel(**transformer_config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def check_weights_match_config(weights_path: Path, config_path: Path) -> None:
    """Fail with one line when the weights file is not the architecture the config describes."""
    table = read_tensor_table(weights_path)
    check_layout(weights_path, table)
    config = load_transformer_config(config_path)
    found = {name: tuple(entry["shape"]) for name, entry in table.items()}
    check_tensor_table(weights_path, config_path, found, expected_tensor_shapes(config), "tensors")


def write_original_layout(diffusers_weights: Path, out: Path, prefix: str = ORIGINAL_PREFIX) -> None:
    """A diffusers-format SD3 transformer in the original layout (as Stability ships it).

    `normalize_transformer` gives back the same tensors, bit for bit. `prefix=""` writes bare
    `joint_blocks.*` names.
    """
    from safetensors.torch import load_file

    diffusers_weights, out = Path(diffusers_weights), Path(out)
    if detect_layout(diffusers_weights) != DIFFUSERS:
        raise PipelineError(f"{diffusers_weights}: not in the diffusers layout (transformer_blocks.*)")
    original = original_layout_state_dict(load_file(str(diffusers_weights)))
    tensors = {prefix + name: tensor.contiguous() for name, tensor in original.items()}
    with written_atomically(out) as temporary:
        save_safetensors(tensors, temporary)
