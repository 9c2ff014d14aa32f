"""Each package's check: seeded inputs and the fp32 outputs of what the package was converted from.

(The end-to-end check's reference, a whole stock pipeline, is verify/end_to_end/reference.py.)

A check pairs the feeds a package takes (named as in docs/APP_CONTRACT.md) with what the
PyTorch module the package came from returns for them. The MMDiT pieces are referenced by
the same diffusers submodules they were converted from, in fp32. Text encoders and the VAE
are referenced by stock transformers/diffusers calls, not by the wrappers that were
converted, so a wrapper mistake (say, the last hidden state in place of the penultimate
one) shows up as a failed check.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sd3coreml.contract import (
    APP_PADDING,
    BOS,
    CLIP_VOCAB_SIZE,
    EOS,
    HIDDEN_EMBEDS,
    INPUT_IDS,
    LATENT_IMAGE_EMBEDDINGS,
    MAX_TOKENS,
    MODULATION_INPUTS,
    NOISE_PRED,
    POOLED_OUTPUTS,
    POOLED_TEXT_EMBEDDINGS,
    STAGE_OUTPUTS,
    TEXT_ENCODERS,
    TIMESTEP,
    TOKEN_LEVEL_TEXT_EMBEDDINGS,
    VAE_IMAGE,
    VAE_LATENT,
)
from sd3coreml.convert.mmdit import load_shape
from sd3coreml.convert.mmdit_modules import build_block_range, build_conditioning, build_input_stage


@dataclass(frozen=True)
class Check:
    description: str
    inputs: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]


def seeded_normal(generator: np.random.Generator, shape) -> np.ndarray:
    return generator.standard_normal(shape).astype(np.float32)


def run_reference(module: torch.nn.Module, inputs: dict[str, np.ndarray], output_names: list[str]):
    with torch.no_grad():
        outputs = module(*(torch.from_numpy(value) for value in inputs.values()))
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return {name: value.float().numpy() for name, value in zip(output_names, outputs, strict=True)}


def conditioning_check(weights: Path, config: Path, seed: int) -> Check:
    shape = load_shape(weights, config, (0, 0))
    generator = np.random.default_rng(seed)
    inputs = {
        POOLED_TEXT_EMBEDDINGS: seeded_normal(generator, (1, shape.pooled_projection_dim, 1, 1)),
        TIMESTEP: generator.uniform(0.0, 1000.0, (1,)).astype(np.float32),
    }
    reference = run_reference(build_conditioning(shape, weights), inputs, [MODULATION_INPUTS])
    return Check("diffusers CombinedTimestepTextProjEmbeddings (time_text_embed), fp32", inputs, reference)


def input_stage_check(weights: Path, config: Path, latent: tuple[int, int], seed: int) -> Check:
    shape = load_shape(weights, config, latent)
    generator = np.random.default_rng(seed)
    inputs = {
        LATENT_IMAGE_EMBEDDINGS: seeded_normal(generator, (1, shape.in_channels, *latent)),
        TOKEN_LEVEL_TEXT_EMBEDDINGS: seeded_normal(generator, (1, shape.joint_attention_dim, 1, shape.text_tokens)),
        MODULATION_INPUTS: seeded_normal(generator, (1, shape.width)),
    }
    reference = run_reference(build_input_stage(shape, weights), inputs, list(STAGE_OUTPUTS))
    return Check("diffusers PatchEmbed + context_embedder, fp32", inputs, reference)


def block_range_check(weights: Path, config: Path, start: int, end: int, latent: tuple[int, int], seed: int):
    shape = load_shape(weights, config, latent)
    generator = np.random.default_rng(seed)
    inputs = {
        LATENT_IMAGE_EMBEDDINGS: seeded_normal(generator, (1, shape.image_tokens, shape.width)),
        TOKEN_LEVEL_TEXT_EMBEDDINGS: seeded_normal(generator, (1, shape.text_tokens, shape.width)),
        MODULATION_INPUTS: seeded_normal(generator, (1, shape.width)),
    }
    module = build_block_range(shape, start, end, weights)
    has_head = module.has_head
    outputs = [NOISE_PRED] if has_head else list(STAGE_OUTPUTS)
    reference = run_reference(module, inputs, outputs)
    head = " + norm_out, proj_out, unpatchify" if has_head else ""
    return Check(f"diffusers JointTransformerBlock {start}..{end - 1}{head}, fp32", inputs, reference)


def prompt_like_token_ids(generator: np.random.Generator, pad_id: int = EOS) -> np.ndarray:
    """BOS, words from the whole vocabulary (its top ids included), EOS, then the app's padding."""
    words = generator.integers(0, BOS, size=12)
    words[:2] = [CLIP_VOCAB_SIZE - 3, 1]
    ids = np.full((1, MAX_TOKENS), pad_id, dtype=np.int64)
    ids[0, 1 + len(words)] = EOS
    ids[0, 0] = BOS
    ids[0, 1 : 1 + len(words)] = words
    return ids


def text_encoder_check(encoder_dir: Path, seed: int) -> Check:
    """On ids padded as the app pads this encoder's (CLIP-L: EOS, CLIP-G: "!", id 0)."""
    from transformers import CLIPTextModelWithProjection

    encoder = CLIPTextModelWithProjection.from_pretrained(str(encoder_dir), dtype=torch.float32).eval()
    entry = next(name for name, folder in TEXT_ENCODERS.items() if folder == Path(encoder_dir).name)
    ids = prompt_like_token_ids(np.random.default_rng(seed), APP_PADDING[entry][1])
    with torch.no_grad():
        # What StableDiffusion3Pipeline._get_clip_prompt_embeds reads.
        outputs = encoder(torch.from_numpy(ids), output_hidden_states=True)
    reference = {
        HIDDEN_EMBEDS: outputs.hidden_states[-2].numpy(),
        POOLED_OUTPUTS: outputs.text_embeds.numpy(),
    }
    description = "transformers CLIPTextModelWithProjection: hidden_states[-2], text_embeds; fp32"
    return Check(description, {INPUT_IDS: ids.astype(np.float32)}, reference)


def vae_decoder_check(vae_dir: Path, latent: tuple[int, int], seed: int) -> Check:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(vae_dir), torch_dtype=torch.float32).eval()
    z = seeded_normal(np.random.default_rng(seed), (1, vae.config.latent_channels, *latent))
    with torch.no_grad():
        image = vae.decode(torch.from_numpy(z)).sample
    return Check("diffusers AutoencoderKL.decode, fp32", {VAE_LATENT: z}, {VAE_IMAGE: image.numpy()})


def build_check(kind: str, seed: int, weights=None, config=None, source=None, start=None, end=None, latent=None):
    """The check of a package of `kind` (verify-package's --kind choices): MMDiT kinds read `weights`
    and `config`, the others `source`."""
    if kind == "conditioning":
        return conditioning_check(weights, config, seed)
    if kind == "input-stage":
        return input_stage_check(weights, config, tuple(latent), seed)
    if kind == "block-range":
        return block_range_check(weights, config, start, end, tuple(latent), seed)
    if kind == "text-encoder":
        return text_encoder_check(source, seed)
    return vae_decoder_check(source, tuple(latent), seed)
