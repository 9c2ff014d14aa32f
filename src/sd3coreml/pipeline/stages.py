"""The MMDiT's stages: the block range of each of Stage1..N, from the configured stage sizes.

Stage0 is the input stage; the last range holds the head. How a range is named in artifact
paths is pipeline/artifacts.py's.
"""

from dataclasses import dataclass

from sd3coreml.errors import PipelineError


@dataclass(frozen=True)
class BlockRange:
    start: int
    end: int
    has_head: bool



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
