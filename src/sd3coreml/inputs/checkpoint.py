"""Read SD3 transformer checkpoints: the tensor table, checks against the config, lazy loads.

The distilled transformer ships as a bare diffusers-format safetensors file with no config
beside it, so its architecture comes from a pinned config that is checked against the
file's tensor table (the safetensors header) before any job runs. Jobs then read only the
tensors they convert.
"""

import json
import os
import re
import struct
from pathlib import Path

from sd3coreml.errors import PipelineError

SAFETENSORS_METADATA = {"format": "pt"}
PICKLE_SUFFIXES = {".bin", ".ckpt", ".pt", ".pth", ".pkl"}
# The original SD3 key layout; issue-tracked support converts it with diffusers' own code.
ORIGINAL_LAYOUT_PREFIX = "joint_blocks."


def refuse_pickle(path: Path, where: str | None = None) -> None:
    """Refused by name alone: a pickle is never opened, since unpickling can run its code.

    `where` names what pointed at the file (a config key), else the file itself.
    """
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        raise PipelineError(
            f"{where or path} is a pickle checkpoint, refused unread (loading one can run code); convert it to "
            ".safetensors and point at that"
        )


def read_tensor_table(path: Path) -> dict[str, dict]:
    """Return {name: {"dtype", "shape"}} from a safetensors header without loading tensors."""
    path = Path(path)
    refuse_pickle(path)
    if not path.is_file():
        raise PipelineError(f"{path}: checkpoint not found; fix the path in the config")
    with path.open("rb") as stream:
        size_bytes = stream.read(8)
        if len(size_bytes) < 8:
            raise PipelineError(f"{path}: not a safetensors file (truncated header); re-download it")
        (header_size,) = struct.unpack("<Q", size_bytes)
        if header_size > 100_000_000 or header_size > path.stat().st_size - 8:
            raise PipelineError(f"{path}: corrupt safetensors header; re-download the file")
        try:
            header = json.loads(stream.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise PipelineError(f"{path}: corrupt safetensors header; re-download the file") from None
    header.pop("__metadata__", None)
    data_size = path.stat().st_size - 8 - header_size
    if header and max(entry["data_offsets"][1] for entry in header.values()) > data_size:
        raise PipelineError(f"{path}: safetensors file is truncated; re-download it")
    return {name: {"dtype": e["dtype"], "shape": tuple(e["shape"])} for name, e in header.items()}


def load_transformer_config(path: Path) -> dict:
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: transformer config not found; fix the path in the config") from None
    except json.JSONDecodeError as error:
        raise PipelineError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    return {key: value for key, value in config.items() if not key.startswith("_")}


# SD3.5's extra tensors (qk norm, dual attention).
SD35_MARKERS = (".ln_q.", ".ln_k.", ".attn2.")


def refuse_sd35_config(config: dict, config_path: Path) -> None:
    if config.get("dual_attention_layers") or config.get("qk_norm"):
        raise PipelineError(
            f"{config_path}: dual attention layers or qk_norm (SD3.5) are not supported; use an SD3 Medium config"
        )


def refuse_sd35_tensors(weights: Path, names) -> None:
    sd35 = sorted(name for name in names if any(marker in name for marker in SD35_MARKERS))
    if sd35:
        raise PipelineError(
            f"{weights}: holds SD3.5 tensors (qk norm or dual attention, e.g. {sd35[0]}); only SD3 Medium is supported"
        )


def compare_shapes(weights: Path, config_path: Path, expected: dict) -> None:
    """{what: (found, wanted)}: the first mismatch, in one line naming both files."""
    for what, (found, wanted) in expected.items():
        if found is None or tuple(found) != tuple(wanted):
            raise PipelineError(
                f"{weights}: {what} is {found} but {config_path} implies {wanted}; "
                "fix the transformer config or point at the right weights"
            )


def check_tensor_table(
    weights: Path, config_path: Path, found: dict[str, tuple], expected: dict[str, tuple], what: str
):
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    refuse_sd35_tensors(weights, unexpected)
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise PipelineError(
            f"{weights}: {what} do not match {config_path} ({len(missing)} missing, {len(unexpected)} "
            f"unexpected, e.g. {detail}); is the file complete and the config the right one?"
        )
    for name, shape in expected.items():
        if tuple(found[name]) != shape:
            raise PipelineError(
                f"{weights}: tensor {name} has shape {list(found[name])} but {config_path} implies "
                f"{list(shape)}; fix num_layers/widths in the config"
            )


def sd3_tensor_shapes(config: dict) -> dict[str, tuple]:
    """The tensor table of diffusers' `SD3Transformer2DModel` for an SD3 config, without torch.

    Importing torch and diffusers costs seconds at every parse, so the table is written out
    here; tests hold it equal to diffusers' own, built on the meta device.
    """
    width, depth = config["num_attention_heads"] * config["attention_head_dim"], config["num_layers"]
    patch, out_channels = config["patch_size"], config.get("out_channels") or config["in_channels"]
    shapes = {
        "pos_embed.pos_embed": (1, config["pos_embed_max_size"] ** 2, width),
        "pos_embed.proj.weight": (width, config["in_channels"], patch, patch),
        "time_text_embed.timestep_embedder.linear_1.weight": (width, 256),
        "time_text_embed.timestep_embedder.linear_2.weight": (width, width),
        "time_text_embed.text_embedder.linear_1.weight": (width, config["pooled_projection_dim"]),
        "time_text_embed.text_embedder.linear_2.weight": (width, width),
        "context_embedder.weight": (config["caption_projection_dim"], config["joint_attention_dim"]),
        "norm_out.linear.weight": (2 * width, width),
        "proj_out.weight": (patch * patch * out_channels, width),
    }
    for index in range(depth):
        shapes.update(joint_block_shapes(f"transformer_blocks.{index}.", width, last=index == depth - 1))
    # Every layer above is a Linear or a Conv2d with a bias; the positional embedding is not.
    biases = {name.replace(".weight", ".bias"): shape[:1] for name, shape in shapes.items() if name.endswith(".weight")}
    return {**shapes, **biases}


def joint_block_shapes(prefix: str, width: int, last: bool) -> dict[str, tuple]:
    """Weights of one JointTransformerBlock; the last one updates only the image tokens."""
    square, ff_in, ff_out = (width, width), (4 * width, width), (width, 4 * width)
    names = {"norm1.linear": (6 * width, width), "norm1_context.linear": ((2 if last else 6) * width, width)}
    projections = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")
    names.update({f"attn.{projection}": square for projection in projections})
    names.update({"attn.to_out.0": square, "ff.net.0.proj": ff_in, "ff.net.2": ff_out})
    if not last:
        names.update({"attn.to_add_out": square, "ff_context.net.0.proj": ff_in, "ff_context.net.2": ff_out})
    return {f"{prefix}{name}.weight": shape for name, shape in names.items()}


def check_header_matches_config(weights_path: Path, config: dict, config_path: Path) -> None:
    """Cheap parse-time check of the whole tensor table against the config (no torch import).

    Depth and the widths are compared first, so the commonest mistakes are named plainly.
    """
    table = read_tensor_table(weights_path)
    check_layout(weights_path, table)
    width = config["num_attention_heads"] * config["attention_head_dim"]
    patch = config["patch_size"]
    depth = len({name.split(".")[1] for name in table if name.startswith("transformer_blocks.")})
    expected = {
        "number of transformer_blocks": ((depth,), (config["num_layers"],)),
        "pos_embed.proj.weight": (
            table.get("pos_embed.proj.weight", {}).get("shape"),
            (width, config["in_channels"], patch, patch),
        ),
        "context_embedder.weight": (
            table.get("context_embedder.weight", {}).get("shape"),
            (config["caption_projection_dim"], config["joint_attention_dim"]),
        ),
        "time_text_embed.text_embedder.linear_1.weight": (
            table.get("time_text_embed.text_embedder.linear_1.weight", {}).get("shape"),
            (width, config["pooled_projection_dim"]),
        ),
        "pos_embed.pos_embed": (
            table.get("pos_embed.pos_embed", {}).get("shape"),
            (1, config["pos_embed_max_size"] ** 2, width),
        ),
    }
    compare_shapes(weights_path, config_path, expected)
    shapes = {name: tuple(entry["shape"]) for name, entry in table.items()}
    check_tensor_table(weights_path, config_path, shapes, sd3_tensor_shapes(config), "tensors")


def check_layout(weights_path: Path, table: dict) -> None:
    if any(name.startswith(ORIGINAL_LAYOUT_PREFIX) for name in table):
        raise PipelineError(
            f"{weights_path}: tensors are in the original SD3 layout (joint_blocks.*); "
            "convert them to the diffusers layout first"
        )
    if not any(name.startswith("transformer_blocks.") for name in table):
        raise PipelineError(
            f"{weights_path}: not an SD3 transformer (no transformer_blocks.* tensors); "
            "point the config at a diffusers-format SD3 transformer"
        )


def save_safetensors(tensors: dict, path: Path) -> None:
    """Write a bare safetensors checkpoint (torch tensors), readable by every user."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=SAFETENSORS_METADATA)
    except SafetensorError as error:
        # Its Rust writer reports a full disk as text; give callers the OSError (and errno) back.
        os_error = re.search(r"\(os error (\d+)\)", str(error))
        if not os_error:
            raise
        code = int(os_error.group(1))
        raise OSError(code, os.strerror(code), str(path)) from error
    # safetensors 0.8 writes through a private temporary file, leaving mode 0600; downloaded
    # checkpoints are world-readable, and other users' jobs may read these.
    os.chmod(path, 0o644)


def load_tensors(weights_path: Path, names: list[str], dtype=None) -> dict:
    """Read only the named tensors, cast to `dtype` (default float32)."""
    import torch
    from safetensors import safe_open

    dtype = dtype or torch.float32
    with safe_open(str(weights_path), framework="pt") as handle:
        available = set(handle.keys())
        missing = [name for name in names if name not in available]
        if missing:
            raise PipelineError(f"{weights_path}: tensor {missing[0]} is missing; is this the right file?")
        return {name: handle.get_tensor(name).to(dtype) for name in names}
