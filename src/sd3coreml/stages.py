"""The MMDiT's stages: the block range of each of Stage1..N, from the configured stage sizes.

Stage0 is the input stage; the last range holds the head. How a range is named in artifact
paths is pipeline/artifacts.py's.
"""

from dataclasses import dataclass, replace

from sd3coreml.contract import CONDITIONING, STAGE
from sd3coreml.errors import PipelineError

# How a block range computes its attention (docs/ATTENTION.md): diffusers' joint attention as it
# is, or one head at a time (for the Neural Engine's on-chip memory). Only the block ranges hold
# attention; the first is the default, whose artifacts keep the paths they always had.
JOINT, SPLIT_HEADS = "joint", "split_heads"
ATTENTIONS = (JOINT, SPLIT_HEADS)
# The app's MMDiT entries that hold no attention, and what they hold instead.
NO_ATTENTION = {
    CONDITIONING: "the timestep and pooled-text embedding",
    STAGE.format(index=0): "the input stage (patch and text embedding)",
}


@dataclass(frozen=True)
class BlockRange:
    start: int
    end: int
    has_head: bool
    attention: str = JOINT


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


def check_attention(value, where: str) -> str:
    """`value`, an attention's name; `where` names it in the one-line refusal (a config key, a sweep)."""
    if value not in ATTENTIONS:
        raise PipelineError(f"{where} is {value!r}; use one of {', '.join(ATTENTIONS)}")
    return value


def with_attention(ranges: list[BlockRange], value, key: str) -> list[BlockRange]:
    """`ranges` (Stage1..N) computing the attention config `value` names: one attention for every
    range, or `{MultiModalDiffusionTransformerStage<K>: attention}` for some (the others joint)."""
    if not isinstance(value, dict):
        attention = check_attention(value, f"config key '{key}'")
        return [replace(block_range, attention=attention) for block_range in ranges]
    stages = {STAGE.format(index=index): index for index in range(1, len(ranges) + 1)}
    chosen = {}
    for entry, attention in value.items():
        if entry in NO_ATTENTION:
            raise PipelineError(
                f"config key '{key}.{entry}': {entry} is {NO_ATTENTION[entry]} and holds no attention; "
                f"set attention on the block-range stages {STAGE.format(index=1)}..{len(ranges)}"
            )
        if entry not in stages:
            raise PipelineError(
                f"config key '{key}.{entry}' names no block-range stage of this model; use "
                f"{STAGE.format(index=1)}..{len(ranges)}"
            )
        chosen[stages[entry]] = check_attention(attention, f"config key '{key}.{entry}'")
    return [replace(r, attention=chosen.get(index, JOINT)) for index, r in enumerate(ranges, 1)]
