"""Per-weight compression recipes: the JSON artifact, what it is checked against, and its setting.

A recipe gives weights of the transformer, or of a text encoder, their own compression, by
checkpoint tensor name:

    {"format": "sd3coreml-recipe/1",
     "weights": {"transformer_blocks.0.attn.to_q.weight": {"nbits": 4, "granularity": "per_tensor"},
                 "transformer_blocks.0.ff.net.2.weight": "fp16", ...},
     "default": "fp16"}

An entry is `"fp16"` or a setting as config writes one (`mode` may be left out for palettes);
`default` is what every weight the recipe does not name gets. Keyed by the checkpoint's names,
one recipe serves every stage layout and block range: the compress job of each package applies
the entries of the weights that package holds (compress/weights.py). A recipe is named by its
content, `recipe-<first 12 hex digits of the sha256 of its canonical JSON>`, so spelling
(key order, spaces, a left-out `mode`) does not change the name and an edit does.

Before any job a recipe file is checked against the tensor table of each model it is given to, or
of each text encoder (a text encoder's names are its own checkpoint's, e.g.
`text_model.encoder.layers.0.mlp.fc1.weight`; `check_recipes_fit`):
its names exist, are linear or convolution weights (2-D or 4-D), float, and large enough that
coremltools compresses them at all. Torch-free: the workflow reads recipes at parse time.
"""

import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from sd3coreml.compress.palettes import EXACT_KMEANS_MIN_VALUES
from sd3coreml.compress.settings import (
    FP16,
    LINEAR,
    NONE,
    PALETTIZE,
    RECIPE,
    RECIPE_ID_DIGITS,
    CompressionSetting,
    text_encoders_of,
)
from sd3coreml.contract import TEXT_ENCODERS
from sd3coreml.errors import PipelineError
from sd3coreml.inputs.checkpoint import load_transformer_config, read_tensor_table, sd3_tensor_shapes
from sd3coreml.inputs.normalize import DIFFUSERS

RECIPE_FORMAT = "sd3coreml-recipe/1"
RECIPE_KEYS = ("format", "weights", "default")
SHAPE = (
    '{"format": "sd3coreml-recipe/1", "weights": {"<tensor name>": {"nbits": 4, "granularity": "per_tensor"} | "fp16"}, '
    '"default": "fp16"}'
)
# coremltools compresses a weight only above a size, per mode: palettes above the exact k-means
# threshold the palettizer is given (compress/weights.py), linear quantization above
# OpLinearQuantizerConfig's default weight_threshold (coremltools/optimize/coreml/_config.py).
COMPRESSED_ABOVE = {PALETTIZE: EXACT_KMEANS_MIN_VALUES, LINEAR: 2048}
# What a recipe entry may name: a Linear's weight (2-D) or a convolution's (4-D).
WEIGHT_RANKS = (2, 4)
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


def entry_json(setting: CompressionSetting):
    """An entry as the canonical JSON writes it: "fp16", or the setting with its mode."""
    return FP16 if setting.mode == NONE else setting.to_config()


def parse_entry(value, key: str, path: Path) -> CompressionSetting:
    where = f"{path}: key"
    if value == FP16:
        return CompressionSetting()
    if isinstance(value, dict) and "mode" not in value:
        value = {"mode": PALETTIZE, **value}
    if isinstance(value, dict) and value.get("mode") == RECIPE:
        raise PipelineError(f"{where} '{key}.mode' is {RECIPE}; an entry is \"fp16\" or one setting, not a recipe")
    return CompressionSetting.uniform_from_config(value, key, where)


@dataclass(frozen=True)
class Recipe:
    """A recipe's content: a setting per named weight and a default; `path` only names it in messages."""

    weights: tuple[tuple[str, CompressionSetting], ...]  # sorted by name
    default: CompressionSetting
    path: str = field(default="recipe", compare=False)

    @classmethod
    def from_json(cls, data, path) -> "Recipe":
        """The recipe in `data` (parsed JSON), refused in one line naming `path` and the key."""
        if not isinstance(data, dict):
            raise PipelineError(f"{path}: not a recipe; write {SHAPE}")
        unknown = sorted(set(data) - set(RECIPE_KEYS))
        missing = [key for key in RECIPE_KEYS if key not in data]
        if unknown or missing:
            what = f"key '{unknown[0]}' is unknown" if unknown else f"key '{missing[0]}' is missing"
            raise PipelineError(f"{path}: {what}; a recipe is {SHAPE}")
        if data["format"] != RECIPE_FORMAT:
            raise PipelineError(f"{path}: key 'format' is {data['format']!r}; this pipeline reads {RECIPE_FORMAT}")
        if not isinstance(data["weights"], dict):
            raise PipelineError(f"{path}: key 'weights' must map checkpoint tensor names to settings or \"fp16\"")
        weights = tuple(
            (name, parse_entry(value, f"weights.{name}", path)) for name, value in sorted(data["weights"].items())
        )
        recipe = cls(weights, parse_entry(data["default"], "default", path), str(path))
        if all(setting.mode == NONE for setting in recipe.settings()):
            raise PipelineError(
                f"{path}: compresses no weight (every entry and the default are fp16); use {{mode: none}}"
            )
        return recipe

    @classmethod
    def read(cls, path: Path, where: str) -> "Recipe":
        """The recipe file at `path`; `where` names what pointed at it (a config key)."""
        path = Path(path)
        if not path.is_file():
            raise PipelineError(f"{where} ({path}): no such file; fix the path or write the recipe there")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise PipelineError(f"{path}: not JSON ({error}); a recipe is {SHAPE}") from None
        return cls.from_json(data, path)

    def to_json(self) -> dict:
        return {
            "format": RECIPE_FORMAT,
            "weights": {name: entry_json(setting) for name, setting in self.weights},
            "default": entry_json(self.default),
        }

    def canonical_json(self) -> str:
        """The form its name is taken over: sorted keys, no whitespace, every entry spelled in full."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode("ascii")).hexdigest()

    @property
    def slug(self) -> str:
        return f"{RECIPE}-{self.sha256[:RECIPE_ID_DIGITS]}"

    def setting(self, file: str) -> CompressionSetting:
        """The compression setting that applies this recipe, read from `file`."""
        return CompressionSetting(RECIPE, recipe=self.sha256[:RECIPE_ID_DIGITS], file=str(file), content=self)

    def setting_for(self, name: str) -> CompressionSetting:
        """The setting of the weight with checkpoint name `name`: its entry, else the default."""
        return dict(self.weights).get(name, self.default)

    def settings(self) -> set[CompressionSetting]:
        """Every setting the recipe may apply, the default included."""
        return {self.default, *(setting for _, setting in self.weights)}

    def check(self, target: str) -> None:
        """What coremltools 9 needs of the conversion target for each entry."""
        for key, setting in (
            *((f"weights.{name}", setting) for name, setting in self.weights),
            ("default", self.default),
        ):
            problem = setting.target_problem(target)
            if problem:
                raise PipelineError(f"{self.path}: key '{key}' {problem}")

    def check_fits(self, table: dict[str, dict], model: str, key: str = "") -> None:
        """Each named weight is a tensor of `table` ({name: {"shape", "dtype" or None}}, the
        checkpoint's) that its setting compresses; `model` says whose table it is, `key` what
        named the recipe."""
        examples = sorted(name for name, entry in table.items() if len(entry["shape"]) in WEIGHT_RANKS)
        for name, setting in self.weights:
            where = f"{self.path}{f' ({key})' if key else ''}: weights.{name}"
            if name not in table:
                example = next((n for n in examples if ".attn.to_q." in n or ".q_proj." in n), examples[0] if examples else "")
                raise PipelineError(
                    f"{where} is no tensor of {model}; a recipe names checkpoint tensors, e.g. {example}"
                )
            shape, dtype = tuple(table[name]["shape"]), table[name]["dtype"]
            if len(shape) not in WEIGHT_RANKS:
                raise PipelineError(
                    f"{where} is a {len(shape)}-D tensor {list(shape)} of {model}, not a linear or convolution "
                    "weight; drop it"
                )
            if dtype is not None and dtype not in FLOAT_DTYPES:
                raise PipelineError(f"{where} is {dtype} in {model}, not a float tensor; drop it")
            threshold = COMPRESSED_ABOVE.get(setting.mode)
            if threshold is not None and math.prod(shape) <= threshold:
                raise PipelineError(
                    f"{where} holds {math.prod(shape):,} values in {model}; coremltools applies {setting.mode} only "
                    f'to weights of more than {threshold:,}, so it would stay fp16: write "fp16" or drop it'
                )


def write_recipe(recipe: Recipe, path: Path) -> Path:
    """A recipe file: its JSON with sorted keys, indented, ending in a newline."""
    path = Path(path)
    path.write_text(json.dumps(recipe.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8", newline="\n")
    return path


def transformer_table(config_path: Path, weights: Path | None = None) -> dict[str, dict]:
    """{name: {"shape", "dtype"}} of the transformer the MMDiT packages are converted from.

    Names and shapes are the pinned config's table, which the weights are checked equal to
    before any job (inputs/checkpoint.py), so a recipe is checked even where the weights are
    made by a job (synthetic) or normalised from the original layout; dtypes come from
    `weights`' own header where it is given (a diffusers-layout file that exists), else None.
    """
    shapes = sd3_tensor_shapes(load_transformer_config(config_path))
    dtypes = {name: entry["dtype"] for name, entry in read_tensor_table(weights).items()} if weights else {}
    return {name: {"shape": shape, "dtype": dtypes.get(name)} for name, shape in shapes.items()}


def plan_table(plan) -> dict[str, dict]:
    """The tensor table of a model's plan (pipeline/config.py's ModelPlan)."""
    header = plan.layout == DIFFUSERS and Path(plan.weights).is_file()
    return transformer_table(plan.config_path, plan.weights if header else None)


def encoder_tables(components: Path) -> dict[str, tuple[Path, dict]]:
    """{entry: (its folder, its tensor table)} of the text encoders `components` holds already; one
    a job makes or downloads later is checked by its compress job (compress/weights.py)."""
    tables = {}
    for entry, name in TEXT_ENCODERS.items():
        folder = Path(components) / name
        files = sorted(folder.glob("*.safetensors"))
        if files:
            tables[entry] = (folder, {tensor: row for file in files for tensor, row in read_tensor_table(file).items()})
    return tables


def check_recipes_fit(settings, plans, components: Path | None = None) -> None:
    """Each recipe file among `settings` ((config key, setting) pairs) fits what it is given to: the
    transformer of every model of `plans`, or a text encoder of `components` (both for the family's
    key). A budget's recipe does not exist yet: its job makes it from the weights themselves."""
    recipes = [(key, setting) for key, setting in settings if setting.mode == RECIPE and setting.budget is None]
    transformer = [(key, setting) for key, setting in recipes if not text_encoders_of(key)]
    for plan in plans if transformer else ():
        table = plan_table(plan)
        for key, setting in transformer:
            setting.recipe_content.check_fits(table, f"model '{plan.key}' ({plan.weights})", key)
    encoders = [(key, setting) for key, setting in recipes if text_encoders_of(key)]
    tables = encoder_tables(components) if encoders and components is not None else {}
    for key, setting in encoders:
        for entry in text_encoders_of(key):
            if entry in tables:
                folder, table = tables[entry]
                setting.recipe_content.check_fits(table, f"text encoder {entry} ({folder})", key)
