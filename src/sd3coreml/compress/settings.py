"""The compression setting: one frozen value from config to package, as coremltools keeps its
`OpLinearQuantizerConfig` apart from the passes that apply it.

A `CompressionSetting` parses itself from config (`{mode: palettize, nbits: 4, granularity:
per_grouped_channel, group_size: 16}`) and from its own string form, the slug that names a
compressed package (`palettize4_per_grouped_channel16`; `fp16` for no compression), checks
itself against a conversion target, and renders what each consumer takes whole: the slug, the
`compress-package` flags, the package's metadata label, the precision class whose fidelity bar
judges it, and the manifest's record. `FolderCompression` is a folder's settings (a family's,
overridden per entry); a sweep's per-stage mixes hold settings too (sweep/plan.py).

The allowed values are tables (NBITS, GRANULARITIES, the minimum targets): the slug grammar,
the wildcard patterns and the command's help are generated from them, so a new width (1- and
2-bit palettes) or a new mode is a table entry. Applying a setting is compress/weights.py.
Nothing here imports coremltools: Snakemake imports this module at parse time.
"""

import re
from dataclasses import dataclass, field

from sd3coreml.errors import PipelineError

NONE = "none"
FP16 = "fp16"
LINEAR, PALETTIZE = "linear_symmetric", "palettize"
MODES = (LINEAR, PALETTIZE)

# Widths per mode, and per mode its granularities with the size key each needs (the first is
# the default). coremltools 9 runs more; these are the ones the pipeline builds and tests.
NBITS = {LINEAR: (8, 4), PALETTIZE: (8, 6, 4)}
GRANULARITIES = {
    LINEAR: {"per_channel": None, "per_tensor": None, "per_block": "block_size"},
    PALETTIZE: {"per_tensor": None, "per_grouped_channel": "group_size"},
}
SIZE_KEYS = ("block_size", "group_size")

# Spec versions of ML Program targets; iOS15 lacks fp16 inputs/outputs and is refused.
CONVERSION_TARGETS = {"iOS16": 16, "iOS17": 17, "iOS18": 18}

# The oldest conversion target at which coremltools 9 compresses weights each way
# (coremltools/optimize/coreml/_quantization_passes.py): its passes need iOS16; 4-bit linear
# quantization, blocks of weights sharing a scale (constexpr_blockwise_shift_scale) and a
# palette per group of channels (iOS18 constexpr_lut_to_dense) need iOS18.
COMPRESSION_MINIMUM_TARGET = {
    (LINEAR, 8): "iOS16",
    (LINEAR, 4): "iOS18",
    (PALETTIZE, 8): "iOS16",
    (PALETTIZE, 6): "iOS16",
    (PALETTIZE, 4): "iOS16",
}
GRANULARITY_MINIMUM_TARGET = {"per_block": "iOS18", "per_grouped_channel": "iOS18"}


# coremltools 9 ships its own compiled, exact 1-D k-means (coremltools._deps.kmeans1d; the
# kmeans1d PyPI package is not what it calls). Where that extension does not load
# (`_HAS_KMEANS1D` false) it palettizes with a randomised k-means instead, without a word.
BUNDLED_KMEANS1D = "coremltools/_deps/kmeans1d/_core"
NO_EXACT_KMEANS = (
    "palettization needs coremltools' bundled exact 1-D k-means (coremltools._deps.kmeans1d), which this "
    "coremltools install lacks; reinstall coremltools==9.0 from its wheel (make .venv/.installed)"
)


def _slug_head(mode: str, nbits) -> str:
    return f"palettize{nbits}" if mode == PALETTIZE else f"int{nbits}_{mode}"


def _granularity_pattern(mode: str, granularities=None) -> str:
    offered = GRANULARITIES[mode] if granularities is None else granularities
    return "|".join(g.removeprefix("per_") + (r"\d+" if GRANULARITIES[mode][g] else "") for g in offered)


def slug_pattern(mode: str, granularities=None) -> str:
    """A regular expression for the slugs of `mode` (at the given granularities, else all)."""
    widths = "".join(str(nbits) for nbits in sorted(NBITS[mode]))
    return f"{_slug_head(mode, f'[{widths}]')}_per_({_granularity_pattern(mode, granularities)})"


# Wildcard patterns of compressed packages. Palettes per tensor are their own job family: the
# one compression that uses threads (compress/palettes.py).
TENSOR_PALETTE_SLUG = slug_pattern(PALETTIZE, ["per_tensor"])
SINGLE_THREAD_SLUG = f"{slug_pattern(LINEAR)}|{slug_pattern(PALETTIZE, ['per_grouped_channel'])}"
SLUG_PATTERN = f"{SINGLE_THREAD_SLUG}|{TENSOR_PALETTE_SLUG}"
SLUG_GRAMMAR = (
    f"{FP16}, int<{'|'.join(map(str, NBITS[LINEAR]))}>_{LINEAR}_per_<{_granularity_pattern(LINEAR)}>"
    f" or palettize<{'|'.join(map(str, NBITS[PALETTIZE]))}>_per_<{_granularity_pattern(PALETTIZE)}>"
).replace(r"\d+", "N")


@dataclass(frozen=True)
class CompressionSetting:
    """How one package's weights are compressed: a mode, its width, granularity and group/block size.

    `CompressionSetting()` is no compression (fp16). Built by `from_config` or `from_slug`, which
    refuse what the pipeline cannot build in one line naming the key; `check` adds what depends
    on the conversion target.
    """

    mode: str = NONE
    nbits: int | None = None
    granularity: str | None = None
    size: int | None = None  # block_size (per_block) or group_size (per_grouped_channel)

    @classmethod
    def from_config(cls, value, key: str = "compression") -> "CompressionSetting":
        if not isinstance(value, dict) or "mode" not in value:
            raise PipelineError(f"config key '{key}' is {value!r}; write {{mode: none}} or {{mode: ..., nbits: ...}}")
        mode = value["mode"]
        if mode == NONE:
            return cls()
        if mode not in MODES:
            raise PipelineError(f"config key '{key}.mode' is {mode!r}; use none, {' or '.join(MODES)}")
        if "nbits" not in value:
            raise PipelineError(f"config key '{key}.nbits' is missing; set {' or '.join(map(str, NBITS[mode]))}")
        nbits, offered = value["nbits"], GRANULARITIES[mode]
        if nbits not in NBITS[mode]:
            raise PipelineError(f"config key '{key}.nbits' is {nbits}; {mode} takes {' or '.join(map(str, NBITS[mode]))}")
        granularity = value.get("granularity", next(iter(offered)))
        if granularity not in offered:
            raise PipelineError(f"config key '{key}.granularity' is {granularity!r}; {mode} takes {', '.join(offered)}")
        size_key = offered[granularity]
        for other in SIZE_KEYS:
            if other in value and other != size_key:
                needs = "per_block" if other == "block_size" else "per_grouped_channel"
                raise PipelineError(f"config key '{key}.{other}' needs granularity {needs}; drop it")
        size = value.get(size_key) if size_key else None
        if size_key and not (isinstance(size, int) and not isinstance(size, bool) and size > 0):
            raise PipelineError(f"config key '{key}.{size_key}' must be a positive integer with {granularity}")
        return cls(mode, nbits, granularity, size)

    @classmethod
    def from_slug(cls, slug: str) -> "CompressionSetting":
        """The setting a compressed package's name stands for (`int8_linear_symmetric_per_channel`)."""
        if slug == FP16:
            return cls()
        for mode in MODES:
            named = re.fullmatch(slug_pattern(mode), slug)
            if named:
                nbits = int(re.search(r"\d+", slug.removeprefix("int")).group())
                granularity, size = re.fullmatch(r"per_(\D+)(\d*)", slug[slug.index("_per_") + 1 :]).groups()
                return cls(mode, nbits, f"per_{granularity}", int(size) if size else None)
        raise PipelineError(f"{slug!r} names no compression setting; write {SLUG_GRAMMAR}")

    @property
    def slug(self) -> str:
        if self.mode == NONE:
            return FP16
        return f"{_slug_head(self.mode, self.nbits)}_{self.granularity}{self.size or ''}"

    @property
    def flags(self) -> str:
        """compress-package's flags for this setting."""
        return f"--compression {self.slug}"

    @property
    def label(self) -> str:
        """The package's `sd3coreml.compression` metadata, e.g. `palettize 4-bit per_grouped_channel 16`."""
        return f"{self.mode} {self.nbits}-bit {self.granularity}" + (f" {self.size}" if self.size else "")

    @property
    def precision(self) -> str:
        """The class whose fidelity bar judges a package: fp16, int8, int4 or palettized."""
        if self.mode == NONE:
            return FP16
        return "palettized" if self.mode == PALETTIZE else f"int{self.nbits}"

    @property
    def size_key(self) -> str | None:
        return GRANULARITIES[self.mode][self.granularity] if self.mode != NONE else None

    @property
    def uses_threads(self) -> bool:
        """Palettes per tensor are computed on the job's threads; every other setting runs on one."""
        return self.mode == PALETTIZE and self.granularity == "per_tensor"

    def to_config(self) -> dict:
        """The setting as config writes it: what a folder's manifest.json records."""
        if self.mode == NONE:
            return {"mode": NONE}
        sized = {self.size_key: self.size} if self.size_key else {}
        return {"mode": self.mode, "nbits": self.nbits, "granularity": self.granularity, **sized}

    def check(self, target: str, key: str = "compression") -> None:
        """What coremltools 9 needs to apply this setting to a package converted for `target`."""
        if self.mode == NONE:
            return
        for reason, minimum in (
            (f"{self.nbits}-bit", COMPRESSION_MINIMUM_TARGET[self.mode, self.nbits]),
            (self.granularity, GRANULARITY_MINIMUM_TARGET.get(self.granularity)),
        ):
            if minimum and CONVERSION_TARGETS[minimum] > CONVERSION_TARGETS[target]:
                raise PipelineError(
                    f"config key '{key}' ({self.mode}, {reason}) needs conversion_target {minimum} or newer "
                    f"(coremltools 9), but it is {target}; raise conversion_target to {minimum} or use 8 bits per channel"
                )
        if self.mode == PALETTIZE and not exact_kmeans_installed():
            # Without its exact k-means, coremltools palettizes with a randomised one: refuse up front.
            raise PipelineError(f"config key '{key}': {NO_EXACT_KMEANS}")


def checked_setting(value, key: str, target: str) -> CompressionSetting:
    """A setting from config, checked against the conversion target."""
    setting = CompressionSetting.from_config(value, key)
    setting.check(target, key)
    return setting


@dataclass(frozen=True)
class FolderCompression:
    """A folder's compression (config `compression`): a setting per family, overridden per entry."""

    families: dict[str, CompressionSetting]
    overrides: dict[str, CompressionSetting] = field(default_factory=dict)

    @classmethod
    def from_config(cls, compression: dict, target: str | None = None) -> "FolderCompression":
        """Each family's and overridden entry's setting; checked against `target` when given."""

        def parse(value, key):
            return checked_setting(value, key, target) if target else CompressionSetting.from_config(value, key)

        families = {name: parse(value, f"compression.{name}") for name, value in compression.items() if name != "overrides"}
        overrides = {
            entry: parse(value, f"compression.overrides.{entry}")
            for entry, value in compression.get("overrides", {}).items()
        }
        return cls(families, overrides)

    def for_entry(self, entry: str, family: str) -> CompressionSetting:
        """The setting one folder entry is compressed with: its override, else its family's."""
        return self.overrides.get(entry, self.families[family])

    def to_config(self) -> dict:
        config = {name: setting.to_config() for name, setting in self.families.items()}
        if self.overrides:
            config["overrides"] = {entry: setting.to_config() for entry, setting in self.overrides.items()}
        return config


def exact_kmeans_installed() -> bool:
    """Whether coremltools' wheel holds its compiled k-means: read from its file list, without
    importing it (importing coremltools takes seconds)."""
    from importlib import metadata

    try:
        files = metadata.distribution("coremltools").files or []
    except metadata.PackageNotFoundError:
        return False
    return any(file.as_posix().startswith(BUNDLED_KMEANS1D) and file.suffix in (".so", ".pyd") for file in files)
