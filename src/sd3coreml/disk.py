"""Check before a build that its outputs fit on the disk.

A conversion writes each weight about three times: the fp16 package (2 bytes a weight),
its compressed twin (1 byte, or less for palettes) and the folder's copy of that. The
estimate reads only safetensors headers, so it costs nothing before a multi-GB build.
"""

import shutil
from pathlib import Path

from sd3coreml.checkpoint import read_tensor_table
from sd3coreml.errors import PipelineError

BYTES_WRITTEN_PER_WEIGHT = 2 + 1 + 1
COMPONENT_WEIGHTS = ("text_encoder", "text_encoder_2", "vae")


def weight_count(weights: Path) -> int:
    count = 0
    for entry in read_tensor_table(weights).values():
        size = 1
        for dim in entry["shape"]:
            size *= dim
        count += size
    return count


def component_weight_files(components: Path) -> list[Path]:
    return [path for name in COMPONENT_WEIGHTS for path in sorted((Path(components) / name).glob("*.safetensors"))]


def estimate_build_bytes(weight_files: list[Path]) -> int:
    """Bytes a build of these weights writes at most; files not yet on disk count zero."""
    return sum(weight_count(path) * BYTES_WRITTEN_PER_WEIGHT for path in weight_files if Path(path).is_file())


def nearest_existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def require_free_space(output_root: Path, weight_files: list[Path]) -> None:
    needed = estimate_build_bytes(weight_files)
    free = shutil.disk_usage(nearest_existing(output_root)).free
    if needed > free:
        raise PipelineError(
            f"{output_root}: the build writes up to {needed / 2**30:.1f} GiB but {free / 2**30:.1f} GiB are free; "
            "free some space or set output_root to a larger disk"
        )
