"""Presets of the synthetic SD3: explicit widths that keep the real model's relations.

`pooled_projection_dim` = CLIP-L + CLIP-G projection widths; `joint_attention_dim` holds
both CLIP hidden states side by side (zero-padded); `caption_projection_dim` = heads x
head width (docs/APP_CONTRACT.md, "Widths"). A preset that breaks them is refused on
construction.
"""

import dataclasses
import re
from dataclasses import dataclass

from sd3coreml.contract import BOS, EOS, LEGACY_EOS_TOKEN_ID
from sd3coreml.errors import PipelineError
from sd3coreml.synthetic.clip_vocabulary import VOCAB_SIZE


@dataclass(frozen=True)
class TransformerPreset:
    """Keyword arguments of diffusers' `SD3Transformer2DModel`."""

    num_layers: int
    attention_head_dim: int
    num_attention_heads: int
    joint_attention_dim: int
    caption_projection_dim: int
    pooled_projection_dim: int
    pos_embed_max_size: int
    sample_size: int
    patch_size: int = 2
    in_channels: int = 16
    out_channels: int = 16
    # SD3.5: RMS-normalised queries and keys, and the blocks with a second image attention.
    qk_norm: str | None = None
    dual_attention_layers: tuple[int, ...] = ()

    @property
    def width(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def diffusers_config(self) -> dict:
        fields = dataclasses.asdict(self)
        fields["dual_attention_layers"] = list(self.dual_attention_layers)
        return {"_class_name": "SD3Transformer2DModel", **fields}


@dataclass(frozen=True)
class ClipTextPreset:
    """The `CLIPTextConfig` fields in which CLIP-L, OpenCLIP bigG and their stand-ins differ."""

    hidden_size: int
    projection_dim: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str
    # What the config says, not the tokenizer's ids: transformers pools at the largest id
    # where it says the legacy 2 (as SD3 Medium's published CLIP-L and CLIP-G configs do),
    # at the first EOS otherwise. The tiny preset has one encoder of each.
    eos_token_id: int = LEGACY_EOS_TOKEN_ID
    bos_token_id: int = 0

    def transformers_config(self) -> dict:
        # Real vocabulary size, so that ids up to 49407 are exercised (docs/APP_CONTRACT.md,
        # "Token ids").
        return {
            **dataclasses.asdict(self),
            "vocab_size": VOCAB_SIZE,
            "max_position_embeddings": 77,
            "layer_norm_eps": 1e-5,
            "pad_token_id": 1,
        }


@dataclass(frozen=True)
class VaePreset:
    """An SD3-like `AutoencoderKL`: 16 latent channels, no quant convs, SD3's latent scaling."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int
    norm_num_groups: int
    sample_size: int
    latent_channels: int = 16

    def diffusers_config(self) -> dict:
        levels = len(self.block_out_channels)
        return {
            "_class_name": "AutoencoderKL",
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * levels,
            "up_block_types": ["UpDecoderBlock2D"] * levels,
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "act_fn": "silu",
            "latent_channels": self.latent_channels,
            "norm_num_groups": self.norm_num_groups,
            "sample_size": self.sample_size,
            "scaling_factor": 1.5305,
            "shift_factor": 0.0609,
            "latents_mean": None,
            "latents_std": None,
            "force_upcast": True,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
            "mid_block_add_attention": True,
        }


@dataclass(frozen=True)
class SyntheticPreset:
    """One synthetic SD3 model: transformer, both text encoders, VAE, and the stored dtype."""

    transformer: TransformerPreset
    clip_l: ClipTextPreset
    clip_g: ClipTextPreset
    vae: VaePreset
    dtype: str

    def __post_init__(self):
        problems = relation_problems(self)
        if problems:
            raise ValueError("synthetic preset breaks SD3's width relations: " + "; ".join(problems))


def shares_components(transformer_preset: str, components_preset: str) -> bool:
    """Whether one preset's transformer is wired for another's text encoders and VAE (same widths)."""
    mine, theirs = get_preset(transformer_preset), get_preset(components_preset)
    return (mine.clip_l, mine.clip_g, mine.vae, mine.dtype) == (theirs.clip_l, theirs.clip_g, theirs.vae, theirs.dtype)


def relation_problems(preset: SyntheticPreset) -> list[str]:
    """The width relations (docs/APP_CONTRACT.md, "Widths") this preset breaks; empty when wired like SD3."""
    transformer, clip_l, clip_g = preset.transformer, preset.clip_l, preset.clip_g
    problems = []
    if transformer.pooled_projection_dim != clip_l.projection_dim + clip_g.projection_dim:
        problems.append("pooled_projection_dim must equal CLIP-L + CLIP-G projection widths")
    if transformer.joint_attention_dim < clip_l.hidden_size + clip_g.hidden_size:
        problems.append("joint_attention_dim must hold CLIP-L and CLIP-G hidden states side by side")
    if transformer.caption_projection_dim != transformer.width:
        problems.append("caption_projection_dim must equal heads x head width")
    if not transformer.in_channels == transformer.out_channels == preset.vae.latent_channels:
        problems.append("transformer in/out channels must equal the VAE's latent channels")
    return problems


PRESETS = {
    "tiny": SyntheticPreset(
        transformer=TransformerPreset(
            num_layers=5,
            attention_head_dim=16,
            num_attention_heads=4,
            joint_attention_dim=192,
            caption_projection_dim=64,
            pooled_projection_dim=160,
            pos_embed_max_size=16,
            sample_size=16,
        ),
        clip_l=ClipTextPreset(
            hidden_size=64,
            projection_dim=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=256,
            hidden_act="quick_gelu",
        ),
        clip_g=ClipTextPreset(
            hidden_size=96,
            projection_dim=96,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=192,
            hidden_act="gelu",
            eos_token_id=EOS,
            bos_token_id=BOS,
        ),
        vae=VaePreset(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8, sample_size=128),
        dtype="float32",
    ),
    "sd3-medium": SyntheticPreset(
        transformer=TransformerPreset(
            num_layers=24,
            attention_head_dim=64,
            num_attention_heads=24,
            joint_attention_dim=4096,
            caption_projection_dim=1536,
            pooled_projection_dim=2048,
            pos_embed_max_size=192,
            sample_size=128,
        ),
        clip_l=ClipTextPreset(
            hidden_size=768,
            projection_dim=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            hidden_act="quick_gelu",
        ),
        clip_g=ClipTextPreset(
            hidden_size=1280,
            projection_dim=1280,
            num_hidden_layers=32,
            num_attention_heads=20,
            intermediate_size=5120,
            hidden_act="gelu",
        ),
        vae=VaePreset(
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=1024
        ),
        # The published distilled checkpoints are float16.
        dtype="float16",
    ),
}

# SD3.5 at its real dimensions (stabilityai/stable-diffusion-3.5-medium and -large
# transformer configs), with SD3 Medium's text encoders and VAE, which SD3.5 keeps.
_SD3 = PRESETS["sd3-medium"]
PRESETS["sd3.5-medium"] = dataclasses.replace(
    _SD3,
    transformer=dataclasses.replace(
        _SD3.transformer, pos_embed_max_size=384, qk_norm="rms_norm", dual_attention_layers=tuple(range(13))
    ),
)
PRESETS["sd3.5-large"] = dataclasses.replace(
    _SD3,
    transformer=dataclasses.replace(
        _SD3.transformer, num_layers=38, num_attention_heads=38, caption_projection_dim=2432, qk_norm="rms_norm"
    ),
)
# The tiny model with SD3.5's two additions (both present, the second attention in the first
# two blocks only), sharing the tiny preset's text encoders and VAE.
PRESETS["sd3.5-tiny"] = dataclasses.replace(
    PRESETS["tiny"],
    transformer=dataclasses.replace(PRESETS["tiny"].transformer, qk_norm="rms_norm", dual_attention_layers=(0, 1)),
)


# The preset names, as a Snakemake wildcard pattern (rules/checkpoints.smk).
PRESET_PATTERN = "|".join(re.escape(name) for name in PRESETS)


def get_preset(name: str) -> SyntheticPreset:
    if name not in PRESETS:
        raise PipelineError(f"unknown synthetic preset {name!r}: use one of {', '.join(PRESETS)}")
    return PRESETS[name]
