"""From config to plan: stage ranges and the content-derived names of every artifact.

An artifact's path says what determines its content (model, block range, head, latent
size, conversion target, precision), never its position in one layout, so two layouts that
share a block range share the file and a stage-size change replans only what changed.
"""

import re
from dataclasses import dataclass

from sd3coreml.contract import CLIENT, TEXT_ENCODERS, TOKENIZER_FILES
from sd3coreml.contract import CONDITIONING as CONTRACT_CONDITIONING
from sd3coreml.contract import STAGE as CONTRACT_STAGE
from sd3coreml.errors import PipelineError


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
    """A directory name for compression settings, e.g. `int8_linear_symmetric_per_channel`.

    Group and block sizes end the name: `palettize4_per_grouped_channel16`,
    `int4_linear_symmetric_per_block32`.
    """
    mode = settings["mode"]
    if mode == "none":
        return "fp16"
    if mode == "palettize":
        granularity = settings.get("granularity", "per_tensor")
        return f"palettize{settings['nbits']}_{granularity}{settings.get('group_size', '')}"
    granularity = settings.get("granularity", "per_channel")
    return f"int{settings['nbits']}_{mode}_{granularity}{settings.get('block_size', '')}"


def compression_settings(slug: str) -> dict:
    """Invert `quantization_slug`: the settings a compression directory name stands for."""
    if slug == "fp16":
        return {"mode": "none"}
    if slug.startswith("palettize"):
        nbits, granularity = slug.removeprefix("palettize").split("_", 1)
        settings, size_key = {"mode": "palettize", "nbits": int(nbits)}, "group_size"
    else:
        bits, rest = slug.split("_", 1)
        mode, granularity = rest.rsplit("_per_", 1)
        settings, size_key = {"mode": mode, "nbits": int(bits.removeprefix("int"))}, "block_size"
        granularity = f"per_{granularity}"
    size = re.search(r"\d+$", granularity)
    if size:
        settings[size_key] = int(size.group())
        granularity = granularity[: size.start()]
    return {**settings, "granularity": granularity}


def latent_slug(latent_size: list[int]) -> str:
    return f"latent{latent_size[0]}x{latent_size[1]}"


def entry_compression(compression: dict, entry: str, family: str) -> dict:
    """The settings one folder entry is compressed with: its override, else its family's."""
    return compression.get("overrides", {}).get(entry, compression[family])


def entry_settings(ranges: list[BlockRange], config: dict) -> dict[str, dict]:
    """Contract name (without suffix) -> the config values that shaped that folder entry.

    Recorded in every folder's manifest.json, so a reader sees what each file was made from.
    """
    target, latent, compression = config["conversion_target"], config["latent_size"], config["compression"]

    def mmdit(entry: str) -> dict:
        settings = {"conversion_target": target, "source": "transformer_weights"}
        return {**settings, "compression": entry_compression(compression, entry, "mmdit")}

    settings = {
        name: {
            "conversion_target": target,
            "compression": entry_compression(compression, name, "text_encoders"),
            "source": f"components/{folder}",
        }
        for name, folder in TEXT_ENCODERS.items()
    }
    settings["VAEDecoder"] = {"conversion_target": target, "source": "components/vae", "latent_size": latent}
    settings[CONTRACT_CONDITIONING] = mmdit(CONTRACT_CONDITIONING)
    stage0 = CONTRACT_STAGE.format(index=0)
    settings[stage0] = {**mmdit(stage0), "latent_size": latent}
    for index, block_range in enumerate(ranges, 1):
        entry = CONTRACT_STAGE.format(index=index)
        blocks = {"blocks": [block_range.start, block_range.end], "head": block_range.has_head}
        settings[entry] = {**mmdit(entry), "latent_size": latent, **blocks}
    settings.update({name: {"source": "components/tokenizer"} for name in TOKENIZER_FILES})
    return settings


def manifest_request(model, config: dict, toolchain: dict, kind: str) -> dict:
    """What shaped a folder, recorded in its manifest.json: no host paths, no times.

    `model` is the model's plan (config.ModelPlan): its key, block ranges and input files.
    """
    return {
        "kind": kind,
        "client": CLIENT,
        "model": model.key,
        "config": {
            "stage_sizes": [r.end - r.start for r in model.ranges],
            "stage_block_ranges": [[r.start, r.end] for r in model.ranges],
            "latent_size": config["latent_size"],
            "batch_size": config["batch_size"],
            "conversion_target": config["conversion_target"],
            "compression": config["compression"],
        },
        "artifacts": entry_settings(model.ranges, config),
        "toolchain": toolchain,
        "input_files": {
            "transformer_weights": str(model.weights),
            "transformer_config": str(model.config_path),
            "components": config["components"],
        },
    }
