"""From config to plan: stage ranges and the content-derived names of every artifact.

An artifact's path says what determines its content (model, block range, head, latent
size, conversion target, precision), never its position in one layout, so two layouts that
share a block range share the file and a stage-size change replans only what changed.
"""

from dataclasses import dataclass

from sd3coreml.errors import PipelineError

CONTRACT_STAGE = "MultiModalDiffusionTransformerStage{index}"
CONTRACT_CONDITIONING = "MultiModalDiffusionTransformerConditioning"
TEXT_ENCODERS = {"TextEncoder": "text_encoder", "TextEncoder2": "text_encoder_2"}
TOKENIZER_FILES = ("vocab.json", "merges.txt")


@dataclass(frozen=True)
class BlockRange:
    start: int
    end: int
    has_head: bool

    @property
    def slug(self) -> str:
        return f"blocks{self.start}-{self.end}" + ("_head" if self.has_head else "")


def stage_ranges(stage_sizes: list[int], depth: int, key: str = "stage_sizes") -> list[BlockRange]:
    """Block ranges of Stage1..N; the sizes must be positive integers summing to the depth."""
    if not stage_sizes:
        raise PipelineError(f"config key '{key}' is empty; give block counts summing to {depth}")
    for size in stage_sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise PipelineError(f"config key '{key}' holds {size!r}; each stage size must be a positive integer")
    if sum(stage_sizes) != depth:
        raise PipelineError(
            f"config key '{key}' sums to {sum(stage_sizes)} but the transformer has {depth} blocks; "
            f"make the sizes sum to {depth}"
        )
    ranges, start = [], 0
    for size in stage_sizes:
        ranges.append(BlockRange(start, start + size, has_head=start + size == depth))
        start += size
    return ranges


def quantization_slug(settings: dict) -> str:
    """A directory name for compression settings, e.g. `int8_linear_symmetric_per_channel`."""
    mode = settings["mode"]
    if mode == "none":
        return "fp16"
    if mode == "palettize":
        return f"palettize{settings['nbits']}_{settings.get('granularity', 'per_tensor')}"
    return f"int{settings['nbits']}_{mode}_{settings.get('granularity', 'per_channel')}"


def compression_settings(slug: str) -> dict:
    """Invert `quantization_slug`: the settings a compression directory name stands for."""
    if slug.startswith("palettize"):
        nbits, granularity = slug.removeprefix("palettize").split("_", 1)
        return {"mode": "palettize", "nbits": int(nbits), "granularity": granularity}
    bits, rest = slug.split("_", 1)
    mode, granularity = rest.rsplit("_per_", 1)
    return {"mode": mode, "nbits": int(bits.removeprefix("int")), "granularity": f"per_{granularity}"}


def latent_slug(latent_size: list[int]) -> str:
    return f"latent{latent_size[0]}x{latent_size[1]}"


def entry_settings(ranges: list[BlockRange], config: dict) -> dict[str, dict]:
    """Contract name (without suffix) -> the config values that shaped that folder entry.

    Recorded in every folder's manifest.json, so a reader sees what each file was made from.
    """
    target, latent = config["conversion_target"], config["latent_size"]
    mmdit = {
        "conversion_target": target,
        "source": "transformer_weights",
        "compression": config["compression"]["mmdit"],
    }
    encoders = {"conversion_target": target, "compression": config["compression"]["text_encoders"]}
    settings = {name: {**encoders, "source": f"components/{folder}"} for name, folder in TEXT_ENCODERS.items()}
    settings["VAEDecoder"] = {"conversion_target": target, "source": "components/vae", "latent_size": latent}
    settings[CONTRACT_CONDITIONING] = mmdit
    settings[CONTRACT_STAGE.format(index=0)] = {**mmdit, "latent_size": latent}
    for index, block_range in enumerate(ranges, 1):
        blocks = {"blocks": [block_range.start, block_range.end], "head": block_range.has_head}
        settings[CONTRACT_STAGE.format(index=index)] = {**mmdit, "latent_size": latent, **blocks}
    settings.update({name: {"source": "components/tokenizer"} for name in TOKENIZER_FILES})
    return settings
