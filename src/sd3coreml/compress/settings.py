"""One compression-settings value: its directory name, its flags, its precision, where it runs.

A setting is a config dict (`{mode: linear_symmetric, nbits: 8, granularity: per_channel}`,
`{mode: palettize, nbits: 4, granularity: per_grouped_channel, group_size: 16}`, or
`{mode: none}`). Everything the pipeline knows about one lives here: its slug in artifact
paths (`int8_linear_symmetric_per_channel`) and back, the `compress-package` flags, the
precision class its fidelity bar is chosen by, the conversion target it needs (coremltools 9),
and its checks. Applying it to a package is compress/weights.py, as coremltools keeps
`_config.py` apart from its operations. Nothing here imports coremltools.
"""

import re
from pathlib import Path

from sd3coreml.errors import PipelineError

# Directory names of compressed packages (quantization_slug); `fp16` is the uncompressed one.
# Palettes per tensor are their own job family: they are the one compression that uses threads.
TENSOR_PALETTE_SLUG = r"palettize[468]_per_tensor"
SINGLE_THREAD_SLUG = r"int[48]_linear_symmetric_per_(channel|tensor|block\d+)|palettize[468]_per_grouped_channel\d+"
SLUG_PATTERN = f"{SINGLE_THREAD_SLUG}|{TENSOR_PALETTE_SLUG}"
MODES = ("linear_symmetric", "palettize")


# Spec versions of ML Program targets; iOS15 lacks fp16 inputs/outputs and is refused.
CONVERSION_TARGETS = {"iOS16": 16, "iOS17": 17, "iOS18": 18}


# The oldest conversion target at which coremltools 9 compresses weights each way
# (coremltools/optimize/coreml/_quantization_passes.py): its passes need iOS16; 4-bit linear
# quantization, blocks of weights sharing a scale (constexpr_blockwise_shift_scale) and a
# palette per group of channels (iOS18 constexpr_lut_to_dense) need iOS18.
COMPRESSION_MINIMUM_TARGET = {
    ("linear_symmetric", 8): "iOS16",
    ("linear_symmetric", 4): "iOS18",
    ("palettize", 8): "iOS16",
    ("palettize", 6): "iOS16",
    ("palettize", 4): "iOS16",
}


GRANULARITY_MINIMUM_TARGET = {"per_block": "iOS18", "per_grouped_channel": "iOS18"}


# Granularities per mode, and the size key each needs.
GRANULARITIES = {
    "linear_symmetric": {"per_channel": None, "per_tensor": None, "per_block": "block_size"},
    "palettize": {"per_tensor": None, "per_grouped_channel": "group_size"},
}


# coremltools 9 ships its own compiled, exact 1-D k-means (coremltools._deps.kmeans1d; the
# kmeans1d PyPI package is not what it calls). Where that extension does not load
# (`_HAS_KMEANS1D` false) it palettizes with a randomised k-means instead, without a word.
BUNDLED_KMEANS1D = "coremltools/_deps/kmeans1d/_core"


NO_EXACT_KMEANS = (
    "palettization needs coremltools' bundled exact 1-D k-means (coremltools._deps.kmeans1d), which this "
    "coremltools install lacks; reinstall coremltools==9.0 from its wheel (make .venv/.installed)"
)


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


def entry_compression(compression: dict, entry: str, family: str) -> dict:
    """The settings one folder entry is compressed with: its override, else its family's."""
    return compression.get("overrides", {}).get(entry, compression[family])


def check_compression_settings(settings: dict, key: str, target: str) -> None:
    """One compression setting under config key `key`, against conversion target `target`."""
    mode = settings["mode"]
    if mode == "none":
        return
    if "nbits" not in settings:
        raise PipelineError(f"config key '{key}.nbits' is missing; set 4, 6 or 8")
    nbits = settings["nbits"]
    needed = COMPRESSION_MINIMUM_TARGET.get((mode, nbits))
    if needed is None:
        offered = " or ".join(str(bits) for known, bits in COMPRESSION_MINIMUM_TARGET if known == mode)
        raise PipelineError(f"config key '{key}.nbits' is {nbits}; {mode} takes {offered}")
    granularity = check_granularity(settings, key)
    for reason, minimum in ((f"{nbits}-bit", needed), (granularity, GRANULARITY_MINIMUM_TARGET.get(granularity))):
        if minimum and CONVERSION_TARGETS[minimum] > CONVERSION_TARGETS[target]:
            raise PipelineError(
                f"config key '{key}' ({mode}, {reason}) needs conversion_target {minimum} or newer "
                f"(coremltools 9), but it is {target}; raise conversion_target to {minimum} or use 8 bits per channel"
            )
    if mode == "palettize":
        require_exact_palettes(key)


def check_granularity(settings: dict, key: str) -> str:
    mode, offered = settings["mode"], GRANULARITIES[settings["mode"]]
    granularity = settings.get("granularity", next(iter(offered)))
    if granularity not in offered:
        raise PipelineError(f"config key '{key}.granularity' is {granularity!r}; {mode} takes {', '.join(offered)}")
    size_key = offered[granularity]
    for other in ("block_size", "group_size"):
        if other in settings and other != size_key:
            raise PipelineError(f"config key '{key}.{other}' needs granularity {granularity_of(other)}; drop it")
    if size_key and not (isinstance(settings.get(size_key), int) and settings[size_key] > 0):
        raise PipelineError(f"config key '{key}.{size_key}' must be a positive integer with {granularity}")
    return granularity


def granularity_of(size_key: str) -> str:
    return "per_block" if size_key == "block_size" else "per_grouped_channel"


def require_exact_palettes(key: str) -> None:
    # Without its exact k-means, coremltools palettizes with a randomised one: refuse up front.
    try:
        require_exact_kmeans()
    except PipelineError as error:
        raise PipelineError(f"config key '{key}': {error}") from None


def exact_kmeans_installed() -> bool:
    """Whether coremltools' wheel holds its compiled k-means: read from its file list, without importing it."""
    from importlib import metadata

    try:
        files = metadata.distribution("coremltools").files or []
    except metadata.PackageNotFoundError:
        return False
    return any(file.as_posix().startswith(BUNDLED_KMEANS1D) and file.suffix in (".so", ".pyd") for file in files)


def require_exact_kmeans() -> None:
    """At parse time, by coremltools' file list (importing it takes seconds)."""
    if not exact_kmeans_installed():
        raise PipelineError(NO_EXACT_KMEANS)


def settings_label(mode: str, nbits: int, granularity: str, group_size=None, block_size=None) -> str:
    """The package's `sd3coreml.compression` metadata, e.g. `palettize 4-bit per_grouped_channel 16`."""
    size = group_size if granularity == "per_grouped_channel" else block_size if granularity == "per_block" else None
    return f"{mode} {nbits}-bit {granularity}" + (f" {size}" if size else "")


def precision_class(package: Path) -> str:
    """`blocks0-4.int8_linear_symmetric_per_channel.mlpackage` -> `int8`, and so on."""
    slug = Path(package).name.removesuffix(".mlpackage").rsplit(".", 1)[-1]
    if slug.startswith("palettize"):
        return "palettized"
    if slug.startswith("int"):
        return slug.split("_", 1)[0]
    return "fp16"


def cli_flags(settings: dict) -> str:
    """compress-package's flags for one setting."""
    flags = [f"--mode {settings['mode']} --nbits {settings['nbits']} --granularity {settings['granularity']}"]
    sizes = {"group_size": "--group-size", "block_size": "--block-size"}
    return " ".join(flags + [f"{flag} {settings[key]}" for key, flag in sizes.items() if key in settings])


def granularity_choices() -> list[str]:
    return sorted({granularity for offered in GRANULARITIES.values() for granularity in offered})
