"""The geometry of one SD3-family transformer at one latent size: widths, depth, token counts.

Kept free of torch so that planning (Snakemake's parse step) stays fast.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class MMDiTShape:
    """The widths and sizes of one transformer at one latent size."""

    depth: int
    heads: int
    head_dim: int
    patch_size: int
    in_channels: int
    out_channels: int
    joint_attention_dim: int
    caption_projection_dim: int
    pooled_projection_dim: int
    pos_embed_max_size: int
    sample_size: int
    latent_height: int
    latent_width: int
    text_tokens: int = 154
    # SD3.5: RMS-normalised queries and keys in every attention, and a second self-attention
    # in the image stream of the listed blocks (MMDiT-X). SD3 Medium has neither.
    qk_norm: str | None = None
    dual_attention_layers: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, config: dict, latent_height: int, latent_width: int) -> "MMDiTShape":
        return cls(
            depth=config["num_layers"],
            heads=config["num_attention_heads"],
            head_dim=config["attention_head_dim"],
            patch_size=config["patch_size"],
            in_channels=config["in_channels"],
            out_channels=config.get("out_channels") or config["in_channels"],
            joint_attention_dim=config["joint_attention_dim"],
            caption_projection_dim=config["caption_projection_dim"],
            pooled_projection_dim=config["pooled_projection_dim"],
            pos_embed_max_size=config["pos_embed_max_size"],
            sample_size=config["sample_size"],
            latent_height=latent_height,
            latent_width=latent_width,
            qk_norm=config.get("qk_norm"),
            dual_attention_layers=tuple(config.get("dual_attention_layers") or ()),
        )

    @property
    def width(self) -> int:
        return self.heads * self.head_dim

    @property
    def image_tokens(self) -> int:
        return (self.latent_height // self.patch_size) * (self.latent_width // self.patch_size)
