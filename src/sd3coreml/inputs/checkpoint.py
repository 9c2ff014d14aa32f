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
    # Checked here: the underscore keys are dropped below, and every reader comes through here.
    if config.get("_class_name", SD3_CLASS) != SD3_CLASS:
        raise PipelineError(
            f"{path}: _class_name {config['_class_name']!r} is not supported; supported: {SUPPORTED_TRANSFORMERS}"
        )
    return {key: value for key, value in config.items() if not key.startswith("_")}


# The transformers this pipeline converts: diffusers' `SD3Transformer2DModel` with these
# settings. Other architectures are refused with this list.
SUPPORTED_TRANSFORMERS = (
    "SD3 Medium (config/transformers/sd3-medium.json), SD3.5 Medium (sd3.5-medium.json) "
    "and SD3.5 Large (sd3.5-large.json)"
)
SD3_CLASS = "SD3Transformer2DModel"
QK_NORMS = (None, "rms_norm")
# SD3.5's tensors that SD3 Medium lacks, by the config setting that brings them.
QK_NORM_MARKERS = (".norm_q.", ".norm_k.", ".norm_added_q.", ".norm_added_k.", ".ln_q.", ".ln_k.")
DUAL_ATTENTION_MARKER = ".attn2."


def check_architecture(config: dict, config_path: Path) -> None:
    """Refuse a config outside the SD3 family this pipeline converts, in one line naming the key."""
    if config.get("qk_norm") not in QK_NORMS:
        raise PipelineError(
            f'{config_path}: qk_norm {config["qk_norm"]!r} is not supported (null or "rms_norm"); '
            f"supported: {SUPPORTED_TRANSFORMERS}"
        )
    dual = config.get("dual_attention_layers") or []
    outside = [index for index in dual if not (isinstance(index, int) and 0 <= index < config["num_layers"])]
    if outside:
        raise PipelineError(
            f"{config_path}: dual_attention_layers holds {outside[0]!r}, not a block index below "
            f"num_layers={config['num_layers']}; fix the transformer config"
        )


def is_qk_norm(name: str) -> bool:
    return any(marker in name for marker in QK_NORM_MARKERS)


def is_second_attention(name: str) -> bool:
    return DUAL_ATTENTION_MARKER in name


def name_missing_family(weights: Path, config_path: Path, found, expected) -> None:
    """Tensors of SD3.5's query/key norms or second attention in a file whose config (its tensor
    table `expected`, either layout) has none."""
    dual = [] if any(map(is_second_attention, expected)) else sorted(filter(is_second_attention, found))
    qk = [] if any(map(is_qk_norm, expected)) else sorted(filter(is_qk_norm, found))
    if dual or qk:
        # The second attention has query/key norms of its own: name the attention, the bigger thing.
        what = "a second attention (dual_attention_layers)" if dual else "query/key norms (qk_norm)"
        raise PipelineError(
            f"{weights}: holds {what}, e.g. {(dual or qk)[0]}, which {config_path} does not set: the weights are "
            "SD3.5's; point models.*.config at config/transformers/sd3.5-medium.json or sd3.5-large.json"
        )


# The checkpoint tensors each MMDiT piece converts (convert/mmdit_modules.py builds them).
CONDITIONING_PREFIXES = ("time_text_embed.",)
INPUT_STAGE_PREFIXES = ("pos_embed.", "context_embedder.")
HEAD_PREFIXES = ("norm_out.", "proj_out.")


def block_range_prefixes(start: int, end: int, head: bool) -> tuple[str, ...]:
    blocks = tuple(f"transformer_blocks.{index}." for index in range(start, end))
    return blocks + (HEAD_PREFIXES if head else ())


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
    name_missing_family(weights, config_path, found, expected)
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
    """The tensor table of diffusers' `SD3Transformer2DModel` for an SD3-family config, without torch.

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
    dual = set(config.get("dual_attention_layers") or ())
    for index in range(depth):
        block = joint_block_shapes(f"transformer_blocks.{index}.", width, index == depth - 1, index in dual)
        shapes.update(block)
    # Every layer above is a Linear or a Conv2d with a bias; the positional embedding is not.
    biases = {name.replace(".weight", ".bias"): shape[:1] for name, shape in shapes.items() if name.endswith(".weight")}
    norms = qk_norm_shapes(config, depth, dual) if config.get("qk_norm") else {}
    return {**shapes, **biases, **norms}


def qk_norm_shapes(config: dict, depth: int, dual: set[int]) -> dict[str, tuple]:
    """RMSNorm scales (one per head channel, no bias) of every attention's queries and keys."""
    head = (config["attention_head_dim"],)
    names = {}
    for index in range(depth):
        prefix = f"transformer_blocks.{index}."
        norms = ["attn.norm_q", "attn.norm_k", "attn.norm_added_q", "attn.norm_added_k"]
        norms += ["attn2.norm_q", "attn2.norm_k"] if index in dual else []
        names.update({f"{prefix}{norm}.weight": head for norm in norms})
    return names


def joint_block_shapes(prefix: str, width: int, last: bool, dual: bool = False) -> dict[str, tuple]:
    """Weights of one JointTransformerBlock; the last one updates only the image tokens.

    With dual attention (SD3.5 Medium) the image stream's modulation has 9 chunks, not 6: the
    second attention's shift, scale and gate.
    """
    square, ff_in, ff_out = (width, width), (4 * width, width), (width, 4 * width)
    names = {"norm1.linear": ((9 if dual else 6) * width, width)}
    names["norm1_context.linear"] = ((2 if last else 6) * width, width)
    projections = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")
    names.update({f"attn.{projection}": square for projection in projections})
    names.update({"attn.to_out.0": square, "ff.net.0.proj": ff_in, "ff.net.2": ff_out})
    if not last:
        names.update({"attn.to_add_out": square, "ff_context.net.0.proj": ff_in, "ff_context.net.2": ff_out})
    if dual:
        names.update({f"attn2.{projection}": square for projection in ("to_q", "to_k", "to_v", "to_out.0")})
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
            f"{weights_path}: not an SD3-family transformer (no transformer_blocks.* tensors); "
            f"point the config at a diffusers-format transformer of {SUPPORTED_TRANSFORMERS}"
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
