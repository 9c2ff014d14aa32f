"""The compression setting: one frozen value from config to package, as coremltools keeps its
`OpLinearQuantizerConfig` apart from the passes that apply it.

A `CompressionSetting` parses itself from config (`{mode: palettize, nbits: 4, granularity:
per_grouped_channel, group_size: 16}`) and from its own string form, the slug that names a
compressed package (`palettize4_per_grouped_channel16`; `fp16` for no compression), checks
itself against a conversion target, and renders what each consumer takes whole: the slug, the
`compress-package` flags, the package's metadata label, the precision class whose fidelity bar
judges it, and the manifest's record. `FolderCompression` is a folder's settings (a family's,
overridden per entry); a sweep's per-stage mixes hold settings too (sweep/plan.py).

A setting may also be a per-weight recipe (`{mode: recipe, file: PATH}`, compress/recipes.py):
a JSON file giving each checkpoint tensor its own setting. Its slug names its content
(`recipe-<12 hex of its sha256>`), so an edited recipe is another package and a renamed one
the same; the setting carries the file, which the compress job reads as an input. Or the
recipe is made by a job from measurements and a budget (`{mode: recipe, budget:
{bits_per_weight: 4.5}}`, rules/sensitivity.smk): no file exists at parse time, so its slug
names the budget (`recipe-bpw4.5`, `recipe-bytes900000000`, `recipe-snr30dB`) and the compress
job reads the recipe artifact of its model (`--recipe PATH`, pipeline/artifacts.py).

The allowed values are tables (NBITS, GRANULARITIES, the minimum targets): the slug grammar,
the wildcard patterns and the command's help are generated from them, so a new width or a
new mode is a table entry. Applying a setting is compress/weights.py.
Nothing here imports coremltools: Snakemake imports this module at parse time.
"""

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from sd3coreml.contract import TEXT_ENCODERS
from sd3coreml.errors import PipelineError

if TYPE_CHECKING:
    from sd3coreml.compress.recipes import Recipe

NONE = "none"
FP16 = "fp16"
LINEAR, PALETTIZE = "linear_symmetric", "palettize"
MODES = (LINEAR, PALETTIZE)  # the uniform modes: one setting for every weight of a package
RECIPE = "recipe"  # a setting per weight, from a recipe file (compress/recipes.py)

# Widths per mode, and per mode its granularities with the size key each needs (the first is
# the default). coremltools 9 runs more; these are the ones the pipeline builds and tests.
NBITS = {LINEAR: (8, 4), PALETTIZE: (8, 6, 4, 2, 1)}
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
# palette per group of channels (iOS18 constexpr_lut_to_dense) need iOS18. Palettes of 1 and 2
# bits need no more than the others: iOS16's constexpr_lut_to_dense takes 2, 4, 16, 64 or 256
# entries (converters/mil/mil/ops/defs/iOS16/constexpr_ops.py), and the pass checks only iOS16.
COMPRESSION_MINIMUM_TARGET = {
    (LINEAR, 8): "iOS16",
    (LINEAR, 4): "iOS18",
    (PALETTIZE, 8): "iOS16",
    (PALETTIZE, 6): "iOS16",
    (PALETTIZE, 4): "iOS16",
    (PALETTIZE, 2): "iOS16",
    (PALETTIZE, 1): "iOS16",
}
GRANULARITY_MINIMUM_TARGET = {"per_block": "iOS18", "per_grouped_channel": "iOS18"}

# 8-bit activations (`activations: int8` beside any compressed setting; compress/activations.py):
# coremltools' quantize/dequantize ops are iOS17's. The slug adds `_a8`, the precision class is
# its own (config fidelity.min_psnr_db.a8), and the Neural Engine computes on them only from the
# A17 Pro and M4 on (older ones run the same package, dequantizing).
ACTIVATIONS = ("int8",)
A8 = "a8"
A8_SUFFIX = f"_{A8}"
ACTIVATIONS_MINIMUM_TARGET = "iOS17"
A8_NEEDS = "A17 Pro / M4 or later Neural Engine (int8 activations); older devices run it dequantized, no faster"
A8_COVERS = (
    "inputs and outputs of linears and of adds of two activations (the residual and modulation adds); "
    "attention's matmuls, softmax, norms and gelus compute in fp16, some on 8-bit-rounded inputs"
)


# coremltools 9 ships its own compiled, exact 1-D k-means (coremltools._deps.kmeans1d; the
# kmeans1d PyPI package is not what it calls). Where that extension does not load
# (`_HAS_KMEANS1D` false) it palettizes with a randomised k-means instead, without a word.
BUNDLED_KMEANS1D = "coremltools/_deps/kmeans1d/_core"
NO_EXACT_KMEANS = (
    "palettization needs coremltools' bundled exact 1-D k-means (coremltools._deps.kmeans1d), which this "
    "coremltools install lacks; reinstall coremltools==9.0 from its wheel (make .venv/.installed)"
)


# Keys whose entries are text encoders: a recipe there names an encoder's tensors, and a budget is
# allocated over both encoders at once, so only the family takes one.
TEXT_ENCODERS_KEY = "compression.text_encoders"
TEXT_ENCODER_OVERRIDES = {f"compression.overrides.{entry}": entry for entry in TEXT_ENCODERS}


def text_encoders_of(key: str) -> list[str]:
    """The text encoder entries a config key compresses (both for the family's), else none."""
    if key == TEXT_ENCODERS_KEY:
        return list(TEXT_ENCODERS)
    return [TEXT_ENCODER_OVERRIDES[key]] if key in TEXT_ENCODER_OVERRIDES else []


def _slug_head(mode: str, nbits) -> str:
    return f"palettize{nbits}" if mode == PALETTIZE else f"int{nbits}_{mode}"


def _granularity_pattern(mode: str, granularities=None) -> str:
    offered = GRANULARITIES[mode] if granularities is None else granularities
    return "|".join(g.removeprefix("per_") + (r"\d+" if GRANULARITIES[mode][g] else "") for g in offered)


def slug_pattern(mode: str, granularities=None) -> str:
    """A regular expression for the slugs of `mode` (at the given granularities, else all)."""
    widths = "".join(str(nbits) for nbits in sorted(NBITS[mode]))
    return f"{_slug_head(mode, f'[{widths}]')}_per_({_granularity_pattern(mode, granularities)})"


# A recipe's slug: the first 12 hex digits of the sha256 of its canonical JSON (compress/recipes.py).
RECIPE_ID_DIGITS = 12
RECIPE_CONTENT_SLUG = rf"{RECIPE}-[0-9a-f]{{{RECIPE_ID_DIGITS}}}"


@dataclass(frozen=True)
class BudgetKind:
    """One way to state the budget a recipe is made for: what its value means, the spelling of the
    value in the slug (`{prefix}<value>{suffix}`, the value as f"{x:g}" writes it) and its bounds."""

    meaning: str
    prefix: str
    suffix: str = ""
    integer: bool = False
    maximum: float | None = None
    example: str = "4.5"

    @property
    def pattern(self) -> str:
        # f"{x:g}" of a positive number: digits, a fraction, an exponent (1e-05, 1e+06).
        number = r"\d+" if self.integer else r"\d+(?:\.\d+)?(?:e[+-]\d+)?"
        return f"{re.escape(self.prefix)}{number}{re.escape(self.suffix)}"


# Each prefix holds a letter beyond f (bpw, bytes, snr): no budget's slug is a content's.
BUDGETS = {
    "bits_per_weight": BudgetKind("average bits per weight", "bpw", maximum=16),
    "bytes": BudgetKind("bytes of the weights", "bytes", integer=True, example="900000000"),
    "min_snr_db": BudgetKind("the quality floor in dB", "snr", "dB", example="30"),
}
BUDGET_SLUGS = "|".join(kind.pattern for kind in BUDGETS.values())
RECIPE_BUDGET_SLUG = f"{RECIPE}-(?:{BUDGET_SLUGS})"
RECIPE_SLUG = f"{RECIPE}-(?:[0-9a-f]{{{RECIPE_ID_DIGITS}}}|{BUDGET_SLUGS})"

# Wildcard patterns of compressed packages. Palettes per tensor are their own job family: the
# one compression that uses threads (compress/palettes.py); recipes are another, which reads
# its recipe file and may hold palettes per tensor.
TENSOR_PALETTE_SLUG = slug_pattern(PALETTIZE, ["per_tensor"])
SINGLE_THREAD_SLUG = f"{slug_pattern(LINEAR)}|{slug_pattern(PALETTIZE, ['per_grouped_channel'])}"
WEIGHT_SLUG = f"{SINGLE_THREAD_SLUG}|{TENSOR_PALETTE_SLUG}|{RECIPE_SLUG}"
A8_SLUG = f"(?:{WEIGHT_SLUG}){A8_SUFFIX}"
SLUG_PATTERN = f"{WEIGHT_SLUG}|{A8_SLUG}"
SLUG_GRAMMAR = (
    f"{FP16}, int<{'|'.join(map(str, NBITS[LINEAR]))}>_{LINEAR}_per_<{_granularity_pattern(LINEAR)}>"
    f", palettize<{'|'.join(map(str, NBITS[PALETTIZE]))}>_per_<{_granularity_pattern(PALETTIZE)}>"
    f" or {RECIPE}-<{RECIPE_ID_DIGITS} hex digits> or {RECIPE}-<"
    + "|".join(f"{kind.prefix}N{kind.suffix}" for kind in BUDGETS.values())
    + f"> (with --recipe FILE), each but {FP16} optionally followed by {A8_SUFFIX} (int8 activations)"
).replace(r"\d+", "N")


@dataclass(frozen=True)
class CompressionSetting:
    """How one package's weights are compressed: a mode, its width, granularity and group/block size.

    `CompressionSetting()` is no compression (fp16). Built by `from_config` or `from_slug`, which
    refuse what the pipeline cannot build in one line naming the key; `check` adds what depends
    on the conversion target. A recipe setting (mode `recipe`) is named by its content's id
    alone: two files of the same content are one setting. Read from config it also carries its
    file and content (compress/recipes.py's `Recipe`); from a slug only the id. A recipe made from
    a budget is named by its budget, (kind, value) of BUDGETS; its job's file and content join it there.
    """

    mode: str = NONE
    nbits: int | None = None
    granularity: str | None = None
    size: int | None = None  # block_size (per_block) or group_size (per_grouped_channel)
    recipe: str | None = None  # a recipe's id, the slug's hex digits
    budget: tuple[str, float | int] | None = None  # a generated recipe's budget: (kind, value)
    activations: str | None = None  # "int8": activations quantized too (W8A8 with int8 weights)
    file: str | None = field(default=None, compare=False)
    content: "Recipe | None" = field(default=None, compare=False, repr=False)
    # A recipe's own fidelity bar (config `min_psnr_db` beside it), fixed before anything is measured.
    min_psnr_db: float | None = field(default=None, compare=False)

    @classmethod
    def from_config(cls, value, key: str = "compression") -> "CompressionSetting":
        if isinstance(value, dict) and "activations" in value:
            return cls.with_activations(value, key)
        if isinstance(value, dict) and value.get("mode") == RECIPE:
            return cls.from_recipe_config(value, key)
        if isinstance(value, dict) and value.get("mode") not in (NONE, *MODES, None):
            offered = f"none, {', '.join(MODES)} or {RECIPE}"
            raise PipelineError(f"config key '{key}.mode' is {value['mode']!r}; use {offered}")
        return cls.uniform_from_config(value, key)

    @classmethod
    def with_activations(cls, value: dict, key: str) -> "CompressionSetting":
        """A compressed setting with `activations: int8` beside it: its activations quantized too."""
        activations = value["activations"]
        if activations not in ACTIVATIONS:
            raise PipelineError(
                f"config key '{key}.activations' is {activations!r}; write int8 (8-bit activations) or drop it"
            )
        weights = cls.from_config({name: v for name, v in value.items() if name != "activations"}, key)
        if weights.mode == NONE:
            raise PipelineError(
                f"config key '{key}.activations' goes with compressed weights; W8A8 is "
                "{mode: linear_symmetric, nbits: 8, granularity: per_channel, activations: int8}"
            )
        return replace(weights, activations=activations)

    @classmethod
    def uniform_from_config(cls, value, key: str, where: str = "config key") -> "CompressionSetting":
        """One setting for every weight; `where` says what `key` is a key of (the config, a recipe file)."""
        if not isinstance(value, dict) or "mode" not in value:
            raise PipelineError(f"{where} '{key}' is {value!r}; write {{mode: none}} or {{mode: ..., nbits: ...}}")
        mode = value["mode"]
        if mode == NONE:
            return cls()
        if mode not in MODES:
            raise PipelineError(f"{where} '{key}.mode' is {mode!r}; use none or {' or '.join(MODES)}")
        if "nbits" not in value:
            raise PipelineError(f"{where} '{key}.nbits' is missing; set {' or '.join(map(str, NBITS[mode]))}")
        nbits, offered = value["nbits"], GRANULARITIES[mode]
        if nbits not in NBITS[mode]:
            raise PipelineError(f"{where} '{key}.nbits' is {nbits}; {mode} takes {' or '.join(map(str, NBITS[mode]))}")
        granularity = value.get("granularity", next(iter(offered)))
        if granularity not in offered:
            raise PipelineError(f"{where} '{key}.granularity' is {granularity!r}; {mode} takes {', '.join(offered)}")
        size_key = offered[granularity]
        for other in SIZE_KEYS:
            if other in value and other != size_key:
                needs = "per_block" if other == "block_size" else "per_grouped_channel"
                raise PipelineError(f"{where} '{key}.{other}' needs granularity {needs}; drop it")
        size = value.get(size_key) if size_key else None
        if size_key and not (isinstance(size, int) and not isinstance(size, bool) and size > 0):
            raise PipelineError(f"{where} '{key}.{size_key}' must be a positive integer with {granularity}")
        if "file" in value:
            raise PipelineError(f"{where} '{key}.file' goes with mode {RECIPE} only; drop it")
        return cls(mode, nbits, granularity, size)

    @classmethod
    def from_recipe_config(cls, value: dict, key: str) -> "CompressionSetting":
        """`{mode: recipe, file: PATH}`: the recipe file read and checked (compress/recipes.py)."""
        # recipes.py builds on this module (a recipe's entries are settings), hence the late import.
        from sd3coreml.compress.recipes import Recipe

        extra = sorted(set(value) - {"mode", "file", "budget", "min_psnr_db"})
        if extra:
            raise PipelineError(f"config key '{key}.{extra[0]}': a recipe gives each weight its own setting; drop it")
        if "file" in value and "budget" in value:
            raise PipelineError(f"config key '{key}': a recipe is given as a file or made from a budget; drop one")
        bar = recipe_bar(value.get("min_psnr_db"), f"{key}.min_psnr_db")
        if "budget" in value:
            return replace(cls.from_budget_config(value["budget"], f"{key}.budget"), min_psnr_db=bar)
        if not isinstance(value.get("file"), str) or not value["file"]:
            raise PipelineError(
                f"config key '{key}.file' is missing; name the recipe's JSON file, e.g. recipes/r.json, "
                "or give a budget, e.g. budget: {bits_per_weight: 4.5}"
            )
        setting = Recipe.read(Path(value["file"]), f"config key '{key}.file'").setting(value["file"])
        return replace(setting, min_psnr_db=bar)

    @classmethod
    def from_budget_config(cls, budget, key: str) -> "CompressionSetting":
        """`{bits_per_weight: 4.5}`, `{bytes: 900000000}` or `{min_snr_db: 30}`: a recipe a job makes."""
        if not isinstance(budget, dict) or len(budget) != 1 or next(iter(budget)) not in BUDGETS:
            offered = " or ".join(f"{{{name}: {kind.example}}}" for name, kind in BUDGETS.items())
            raise PipelineError(f"config key '{key}' is {budget!r}; give one budget: {offered}")
        kind, value = next(iter(budget.items()))
        return cls.budget_setting(kind, value, f"config key '{key}.{kind}'")

    @classmethod
    def budget_setting(cls, kind: str, value, where: str) -> "CompressionSetting":
        """The recipe made for a budget of `kind`, its value checked; `where` names what gave it."""
        spec = BUDGETS[kind]
        number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        fits = number and (isinstance(value, int) or not spec.integer) and value > 0
        if not fits or (spec.maximum is not None and value > spec.maximum):
            bound = f" and at most {spec.maximum:g}" if spec.maximum is not None else ""
            whole = f"{'an integer' if spec.integer else 'a number'} above 0{bound}"
            raise PipelineError(f"{where} is {value!r}; write {spec.meaning} as {whole}, e.g. {spec.example}")
        value = value if spec.integer else float(value)
        if not spec.integer and float(f"{value:g}") != value:
            # The slug writes f"{value:g}": a value it rounds would name another budget's recipe.
            raise PipelineError(f"{where} is {value!r}; a recipe's name keeps 6 significant digits: write {value:g}")
        return cls(RECIPE, budget=(kind, value))

    @classmethod
    def from_slug(cls, slug: str) -> "CompressionSetting":
        """The setting a compressed package's name stands for (`int8_linear_symmetric_per_channel`)."""
        if slug == FP16:
            return cls()
        if slug.endswith(A8_SUFFIX) and slug != FP16 + A8_SUFFIX:
            return replace(cls.from_slug(slug.removesuffix(A8_SUFFIX)), activations=ACTIVATIONS[0])
        if re.fullmatch(RECIPE_CONTENT_SLUG, slug):
            return cls(RECIPE, recipe=slug.removeprefix(f"{RECIPE}-"))
        for kind, spec in BUDGETS.items():
            if re.fullmatch(f"{RECIPE}-{spec.pattern}", slug):
                text = slug.removeprefix(f"{RECIPE}-{spec.prefix}").removesuffix(spec.suffix)
                value = int(text) if spec.integer else float(text)
                setting = cls.budget_setting(kind, value, f"{slug!r}: the budget")
                if setting.slug == slug:  # one spelling per budget: recipe-bpw4.5, not recipe-bpw4.50
                    return setting
        for mode in MODES:
            named = re.fullmatch(slug_pattern(mode), slug)
            if named:
                nbits = int(re.search(r"\d+", slug.removeprefix("int")).group())
                granularity, size = re.fullmatch(r"per_(\D+)(\d*)", slug[slug.index("_per_") + 1 :]).groups()
                return cls(mode, nbits, f"per_{granularity}", int(size) if size else None)
        raise PipelineError(f"{slug!r} names no compression setting; write {SLUG_GRAMMAR}")

    def with_recipe_file(self, file) -> "CompressionSetting":
        """A recipe slug's setting completed by its file, which must hold the content the slug names.

        The compress job's check: the file may have changed since Snakemake named the package. A
        budget's slug names no content: its file is the recipe its job made, whatever it holds.
        """
        if self.mode != RECIPE:
            if file is not None:
                raise PipelineError(f"--recipe {file}: goes with a {RECIPE}-<id> setting, not {self.slug}; drop it")
            return self
        if file is None:
            raise PipelineError(f"--compression {self.slug} needs --recipe FILE, the recipe of that content")
        from sd3coreml.compress.recipes import Recipe

        if self.budget is not None:
            return replace(self, file=str(file), content=Recipe.read(Path(file), "--recipe"))
        setting = replace(Recipe.read(Path(file), "--recipe").setting(str(file)), activations=self.activations)
        if setting != self:
            raise PipelineError(
                f"{file}: holds {setting.slug}, not the {self.slug} this package is named after: the recipe changed "
                "after Snakemake planned the job; run snakemake again"
            )
        return setting

    @property
    def slug(self) -> str:
        return self.weights_slug + (A8_SUFFIX if self.activations else "")

    @property
    def weights_slug(self) -> str:
        """The slug of the weights' compression alone."""
        if self.mode == NONE:
            return FP16
        if self.budget is not None:
            spec = BUDGETS[self.budget[0]]
            return f"{RECIPE}-{spec.prefix}{self.budget_value}{spec.suffix}"
        if self.mode == RECIPE:
            return f"{RECIPE}-{self.recipe}"
        return f"{_slug_head(self.mode, self.nbits)}_{self.granularity}{self.size or ''}"

    @property
    def flags(self) -> str:
        """compress-package's flags for this setting."""
        if self.mode == RECIPE:
            if self.file is None:
                fix = "pass the recipe its job made" if self.budget else "name the file in the config"
                raise PipelineError(f"{self.slug}: no recipe file is known for it; {fix}")
            return f"--compression {self.slug} --recipe {self.file}"
        return f"--compression {self.slug}"

    @property
    def budget_value(self) -> str:
        """A generated recipe's budget value as its slug and its job's --budget write it."""
        return str(self.budget[1]) if BUDGETS[self.budget[0]].integer else f"{self.budget[1]:g}"

    @property
    def budget_arg(self) -> str:
        """recipe-from-budget's `--budget KIND=VALUE` value."""
        return f"{self.budget[0]}={self.budget_value}"

    @property
    def label(self) -> str:
        """The package's `sd3coreml.compression` metadata, e.g. `palettize 4-bit per_grouped_channel 16`
        (a recipe's: its slug)."""
        activations = f" + {self.activations} activations" if self.activations else ""
        if self.mode == RECIPE:
            return self.weights_slug + activations
        sized = f" {self.size}" if self.size else ""
        return f"{self.mode} {self.nbits}-bit {self.granularity}{sized}{activations}"

    @property
    def precision(self) -> str:
        """The class whose fidelity bar judges a package: fp16, int8, int4, palettized, or a recipe's
        own slug: each recipe has its bar, its `min_psnr_db` or else the palettes' (`recipe_bars`)."""
        if self.mode == NONE:
            return FP16
        if self.activations:
            return A8
        if self.mode == RECIPE:
            return self.slug
        return "palettized" if self.mode == PALETTIZE else f"int{self.nbits}"

    @property
    def size_key(self) -> str | None:
        return GRANULARITIES[self.mode][self.granularity] if self.mode in MODES else None

    @property
    def uses_threads(self) -> bool:
        """Palettes per tensor are computed on the job's threads, and recipes run in that family
        (they may hold such palettes); every other setting runs on one."""
        return self.mode == RECIPE or (self.mode == PALETTIZE and self.granularity == "per_tensor")

    @property
    def uses_grouped_palettes(self) -> bool:
        """Whether scikit-learn's k-means may run (palettes per group of channels)."""
        if self.mode == RECIPE:
            return any(setting.uses_grouped_palettes for setting in self.recipe_content.settings())
        return self.mode == PALETTIZE and self.granularity == "per_grouped_channel"

    @property
    def recipe_content(self) -> "Recipe":
        if self.content is None:
            raise PipelineError(f"{self.slug}: its recipe was not read; give the recipe file (--recipe FILE)")
        return self.content

    def to_config(self) -> dict:
        """The setting as config writes it: what a folder's manifest.json records (a recipe by its
        file's name and content hash, since the path is the host's)."""
        if self.mode == NONE:
            return {"mode": NONE}
        if self.activations:
            return {**replace(self, activations=None).to_config(), "activations": self.activations}
        bar = {} if self.min_psnr_db is None else {"min_psnr_db": self.min_psnr_db}
        if self.budget is not None:
            # The recipe it was made into is recorded by its hash among the folder's inputs (release/manifest.py).
            return {"mode": RECIPE, "budget": {self.budget[0]: self.budget[1]}, **bar}
        if self.mode == RECIPE:
            return {"mode": RECIPE, "file": Path(self.file).name, "sha256": self.recipe_content.sha256, **bar}
        sized = {self.size_key: self.size} if self.size_key else {}
        return {"mode": self.mode, "nbits": self.nbits, "granularity": self.granularity, **sized}

    @property
    def holds_palettes(self) -> bool:
        """Whether palettes are computed: a palette mode, a recipe with one, a budget's (palettes per tensor)."""
        if self.mode == RECIPE and self.budget is None:
            return any(setting.mode == PALETTIZE for setting in self.recipe_content.settings())
        return self.mode in (PALETTIZE, RECIPE)

    def target_problem(self, target: str) -> str | None:
        """Why coremltools 9 cannot apply this uniform setting to a package converted for `target`, or None."""
        needs = ACTIVATIONS_MINIMUM_TARGET
        if self.activations and CONVERSION_TARGETS[needs] > CONVERSION_TARGETS[target]:
            return (
                f"(activations {self.activations}) needs conversion_target {needs} or newer (coremltools 9's quantize "
                f"ops), but it is {target}; raise conversion_target to {needs} or drop activations"
            )
        if self.mode not in MODES:
            return None
        for reason, minimum in (
            (f"{self.nbits}-bit", COMPRESSION_MINIMUM_TARGET[self.mode, self.nbits]),
            (self.granularity, GRANULARITY_MINIMUM_TARGET.get(self.granularity)),
        ):
            if minimum and CONVERSION_TARGETS[minimum] > CONVERSION_TARGETS[target]:
                return (
                    f"({self.mode}, {reason}) needs conversion_target {minimum} or newer (coremltools 9), but it is "
                    f"{target}; raise conversion_target to {minimum} or use 8 bits per channel"
                )
        return None

    def check(self, target: str, key: str = "compression") -> None:
        """What coremltools 9 needs to apply this setting to a package converted for `target`."""
        if self.mode == RECIPE and self.budget is None:
            self.recipe_content.check(target)
        problem = self.target_problem(target)
        if problem:
            raise PipelineError(f"config key '{key}' {problem}")
        if self.holds_palettes and not exact_kmeans_installed():
            # Without its exact k-means, coremltools palettizes with a randomised one: refuse up front.
            raise PipelineError(f"config key '{key}': {NO_EXACT_KMEANS}")


def recipe_bar(value, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 200:
        raise PipelineError(f"config key '{key}' is {value!r}; give the recipe's bar in dB, e.g. 30")
    return float(value)


def recipe_bars(settings, thresholds: dict) -> dict[str, float]:
    """{recipe slug: its bar} of the recipes among `settings` ((key, setting) pairs): its own
    `min_psnr_db`, else `thresholds`' palettes bar; one recipe given two bars is refused."""
    bars, given = {}, {}
    for key, setting in settings:
        if setting.mode != RECIPE:
            continue
        bar = thresholds["palettized"] if setting.min_psnr_db is None else setting.min_psnr_db
        if bars.get(setting.slug, bar) != bar:
            raise PipelineError(
                f"config key '{key}': {setting.slug} has the bar {bar:g} dB here and {bars[setting.slug]:g} dB at "
                f"'{given[setting.slug]}'; give one recipe one min_psnr_db"
            )
        bars[setting.slug], given[setting.slug] = bar, key
    return bars


def fidelity_bars(thresholds: dict, settings) -> dict[str, float]:
    """The bar of each precision class (config fidelity.min_psnr_db) and of each recipe among
    `settings` ((key, setting) pairs): what a fidelity report or a sweep summary judges by."""
    return {**thresholds, **recipe_bars(settings, thresholds)}


def checked_setting(value, key: str, target: str) -> CompressionSetting:
    """A setting from config, checked against the conversion target."""
    setting = CompressionSetting.from_config(value, key)
    setting.check(target, key)
    return setting


def configured_recipe(slug: str, *sources) -> CompressionSetting:
    """The recipe setting named `slug` among the settings of `sources` (a FolderCompression, a
    sweep plan; None for none), so a recipe package's job finds its file."""
    for source in sources:
        for _, setting in source.settings() if source is not None else ():
            if setting.mode == RECIPE and setting.slug == slug:
                return setting
    raise PipelineError(
        f"{slug}: no recipe of this content is configured; name its file (or budget) in compression or the sweep"
    )


@dataclass(frozen=True)
class FolderCompression:
    """A folder's compression (config `compression`): a setting per family, overridden per entry.

    A recipe file names the tensors of the entries it is given to (the transformer's, or a text
    encoder's); a budget's recipe for the text encoders is allocated over both, so it is given
    to the family, not to one encoder.
    """

    families: dict[str, CompressionSetting]
    overrides: dict[str, CompressionSetting] = field(default_factory=dict)

    @classmethod
    def from_config(cls, compression: dict, target: str | None = None) -> "FolderCompression":
        """Each family's and overridden entry's setting; checked against `target` when given."""

        def parse(value, key):
            setting = checked_setting(value, key, target) if target else CompressionSetting.from_config(value, key)
            if setting.budget is not None and key in TEXT_ENCODER_OVERRIDES:
                raise PipelineError(
                    f"config key '{key}': a budget's recipe is allocated over both text encoders at once; give "
                    f"the budget to {TEXT_ENCODERS_KEY}, or this encoder a recipe file (mode recipe, file: PATH)"
                )
            return setting

        families = {name: parse(value, f"compression.{name}") for name, value in compression.items() if name != "overrides"}
        overrides = {
            entry: parse(value, f"compression.overrides.{entry}")
            for entry, value in compression.get("overrides", {}).items()
        }
        return cls(families, overrides)

    def for_entry(self, entry: str, family: str) -> CompressionSetting:
        """The setting one folder entry is compressed with: its override, else its family's."""
        return self.overrides.get(entry, self.families[family])

    def settings(self) -> list[tuple[str, CompressionSetting]]:
        """Every setting with its config key."""
        keyed = [(f"compression.{name}", setting) for name, setting in self.families.items()]
        return keyed + [(f"compression.overrides.{entry}", setting) for entry, setting in self.overrides.items()]

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
