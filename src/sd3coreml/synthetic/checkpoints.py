"""Deterministic synthetic SD3 checkpoints, written exactly as a real build consumes them.

`write_synthetic_transformer` writes a distilled transformer as a bare diffusers-format
safetensors file (like the published `sd3-medium-4step.safetensors`) plus its config as
JSON; `write_synthetic_components` writes `text_encoder/`, `text_encoder_2/`, `vae/`,
`tokenizer/` and `tokenizer_2/` in the SD3 diffusers layout (the tokenizers hold CLIP's real
vocabulary, see clip_vocabulary.py). Tensor names and shapes come from diffusers and
transformers themselves (models built on the meta device); every value comes from a
generator seeded by (seed, component, tensor name), so a (preset, seed) pair gives
byte-identical files in any process, order or thread count. The presets keep the width
relations of the real model (docs/APP_CONTRACT.md, "Widths"), so a synthetic build is wired
like a real one.
"""

import hashlib
import json
import math
from pathlib import Path

from sd3coreml.atomic import written_atomically
from sd3coreml.inputs.checkpoint import save_safetensors, sd3_tensor_shapes
from sd3coreml.synthetic.clip_vocabulary import write_sd3_tokenizers
from sd3coreml.synthetic.presets import ClipTextPreset, TransformerPreset, VaePreset, get_preset

BIAS_STD = 0.01
NORM_WEIGHT_NOISE_STD = 0.01
# Heavy-tailed weights, shaped like a trained transformer's, so that quantization is tested on
# what it meets in practice: Student-t entries, log-normal per-channel scales, and a few
# input channels much larger than the rest (they set each row's int8 scale).
DISTRIBUTIONS = ("normal", "heavy-tailed")
STUDENT_T_DF = 4.0
CHANNEL_SCALE_SIGMA = 0.5
OUTLIER_EVERY, OUTLIER_GAIN = 256, 20.0
# Measured (Snakemake benchmark, safetensors 0.8 writing from the tensors in place): 6.0 GB
# peak RSS for sd3.5-medium's 4.94 GB of fp16 tensors (1.22x); imports about 0.4 GB.
BASE_MEMORY_MB, TENSOR_MEMORY_FACTOR = 1000, 1.25
DTYPE_BYTES = {"float16": 2, "float32": 4}


def tensor_seed(seed: int, component: str, name: str) -> int:
    """A generator seed for one tensor, independent of every other tensor and of the process."""
    digest = hashlib.sha256(f"{seed}/{component}/{name}".encode("utf-8")).digest()
    return int.from_bytes(digest[:16], "little")


def heavy_tailed_matrix(generator, shape: tuple[int, ...]):
    """Rows of RMS `scale / sqrt(fan_in)` (scale log-normal), outlier columns, Student-t entries."""
    import numpy as np

    rows, fan_in = shape[0], math.prod(shape[1:])
    values = generator.standard_t(STUDENT_T_DF, size=(rows, fan_in))
    outliers = generator.choice(fan_in, size=max(1, fan_in // OUTLIER_EVERY), replace=False)
    values[:, outliers] *= OUTLIER_GAIN
    values /= np.sqrt(np.mean(values**2, axis=1, keepdims=True))
    scales = generator.lognormal(0.0, CHANNEL_SCALE_SIGMA, size=(rows, 1))
    return (values * scales / math.sqrt(fan_in)).astype(np.float32).reshape(shape)


def synthetic_tensor(seed: int, component: str, name: str, shape: tuple[int, ...], dtype, distribution="normal"):
    """One tensor, scaled so activations stay near unit size in fp16 and fp32.

    Matrices and convolutions: normal with std 1/sqrt(fan_in), or `heavy_tailed_matrix`;
    1-D weights (norms): 1 plus small noise; biases: small noise.
    """
    import numpy as np
    import torch

    generator = np.random.default_rng(tensor_seed(seed, component, name))
    if distribution == "heavy-tailed" and len(shape) >= 2 and not name.endswith(".bias"):
        return torch.from_numpy(heavy_tailed_matrix(generator, shape)).to(dtype)
    values = generator.standard_normal(shape, dtype=np.float32)
    if name.endswith(".bias"):
        values *= BIAS_STD
    elif len(shape) == 1:
        values *= NORM_WEIGHT_NOISE_STD
        values += 1.0
    else:
        values *= 1.0 / math.sqrt(math.prod(shape[1:]))
    return torch.from_numpy(values).to(dtype)


def synthetic_state_dict(
    shapes: dict, seed: int, component: str, dtype, fixed: dict | None = None, distribution: str = "normal"
) -> dict:
    """Generated tensors for a shape table; `fixed` supplies computed buffers as they are."""
    fixed = fixed or {}
    tensors = {}
    for name, shape in shapes.items():
        if name in fixed:
            tensors[name] = fixed[name].to(dtype).contiguous()
        else:
            tensors[name] = synthetic_tensor(seed, component, name, shape, dtype, distribution)
    return tensors


def meta_state_dict_shapes(build, computed_buffers=()) -> dict[str, tuple[int, ...]]:
    """Names and shapes of `build()`'s state dict, building the model on the meta device.

    Persistent buffers hold computed values (positional tables), never random ones, so
    each must be listed in `computed_buffers` by the caller that computes it.
    """
    import torch

    with torch.device("meta"):
        model = build()
    state = model.state_dict()
    uncomputed = {name for name, _ in model.named_buffers() if name in state} - set(computed_buffers)
    if uncomputed:
        raise AssertionError(f"no computed values for persistent buffers {sorted(uncomputed)}")
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def transformer_tensor_shapes(preset: str) -> dict[str, tuple[int, ...]]:
    """The tensor table of a preset's transformer checkpoint (as the safetensors header lists it)."""
    from diffusers import SD3Transformer2DModel

    config = get_preset(preset).transformer.diffusers_config()
    return meta_state_dict_shapes(lambda: SD3Transformer2DModel.from_config(config), ["pos_embed.pos_embed"])


def transformer_memory_mb(preset: str) -> int:
    """Memory to declare for writing a preset's transformer: every tensor is held until it is written."""
    spec = get_preset(preset)
    shapes = sd3_tensor_shapes(spec.transformer.diffusers_config())
    tensor_bytes = sum(math.prod(shape) for shape in shapes.values()) * DTYPE_BYTES[spec.dtype]
    return BASE_MEMORY_MB + math.ceil(TENSOR_MEMORY_FACTOR * tensor_bytes / 2**20)


def _sincos_pos_embed(transformer: TransformerPreset):
    """The fixed table diffusers' `PatchEmbed` registers as `pos_embed.pos_embed`."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    table = get_2d_sincos_pos_embed(
        transformer.width,
        transformer.pos_embed_max_size,
        base_size=transformer.sample_size // transformer.patch_size,
        interpolation_scale=1,
        output_type="pt",
    )
    return table.float().unsqueeze(0)


def _write_json(path: Path, value: dict) -> None:
    Path(path).write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_synthetic_transformer(preset: str, seed: int, weights_path, config_path, distribution="normal") -> None:
    """Write a synthetic distilled transformer: bare safetensors weights and its config JSON."""
    import torch

    spec = get_preset(preset)
    shapes = transformer_tensor_shapes(preset)
    fixed = {"pos_embed.pos_embed": _sincos_pos_embed(spec.transformer)}
    tensors = synthetic_state_dict(shapes, seed, "transformer", getattr(torch, spec.dtype), fixed, distribution)
    with written_atomically(weights_path) as temporary:
        save_safetensors(tensors, temporary)
    del tensors
    with written_atomically(config_path) as temporary:
        _write_json(temporary, spec.transformer.diffusers_config())


def _write_clip_text_encoder(clip: ClipTextPreset, dtype: str, seed: int, directory: Path) -> None:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(**clip.transformers_config(), architectures=["CLIPTextModelWithProjection"], dtype=dtype)
    shapes = meta_state_dict_shapes(lambda: CLIPTextModelWithProjection(config))
    tensors = synthetic_state_dict(shapes, seed, directory.name, getattr(torch, dtype))
    config.save_pretrained(directory)
    save_safetensors(tensors, directory / "model.safetensors")


def _write_vae(vae: VaePreset, dtype: str, seed: int, directory: Path) -> None:
    import torch
    from diffusers import AutoencoderKL

    config = vae.diffusers_config()
    shapes = meta_state_dict_shapes(lambda: AutoencoderKL.from_config(config))
    tensors = synthetic_state_dict(shapes, seed, directory.name, getattr(torch, dtype))
    directory.mkdir(parents=True)
    _write_json(directory / "config.json", config)
    save_safetensors(tensors, directory / "diffusion_pytorch_model.safetensors")


def write_synthetic_components(preset: str, seed: int, out_dir) -> None:
    """Write `text_encoder/`, `text_encoder_2/`, `vae/`, `tokenizer/`, `tokenizer_2/` in SD3's diffusers layout."""
    spec = get_preset(preset)
    with written_atomically(Path(out_dir)) as temporary:
        _write_clip_text_encoder(spec.clip_l, spec.dtype, seed, temporary / "text_encoder")
        _write_clip_text_encoder(spec.clip_g, spec.dtype, seed, temporary / "text_encoder_2")
        _write_vae(spec.vae, spec.dtype, seed, temporary / "vae")
        write_sd3_tokenizers(temporary)
