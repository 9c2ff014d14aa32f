"""From `config/sweeps.yaml` to a sweep plan: stage layouts and compression modes of one model.

A config names one sweep (`sweep: {name: demo}`); the sweep splits one configured model's
MMDiT into each layout and compresses each layout's stages under each mode. Artifacts are
named by content (plan.py), so block ranges that layouts share are built once.

A mode is a compression setting, or a per-stage mix: `{default: SETTINGS, stages: {K: SETTINGS}}`
with K a stage index (0 is the input stage; negative counts from the last stage, so -1 is
the head stage of every layout). A setting may be a recipe (`{mode: recipe, file: PATH}`,
compress/recipes.py), checked against the sweep's model before any job, or a recipe made from
a budget (`{mode: recipe, budget: {bits_per_weight: 4.5}}`, rules/sensitivity.smk) for the
sweep's model: uniform modes and recipes side by side make the size-quality front.
"""

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sd3coreml.compress.recipes import check_recipes_fit
from sd3coreml.compress.settings import CompressionSetting, checked_setting, fidelity_bars
from sd3coreml.errors import PipelineError
from sd3coreml.pipeline.config import check_recipe_files
from sd3coreml.stages import ATTENTIONS, JOINT, BlockRange, check_attention, stage_ranges


@dataclass(frozen=True)
class Layout:
    sizes: tuple[int, ...]
    ranges: tuple[BlockRange, ...]

    @property
    def name(self) -> str:
        """`6x4` for six stages of 4 blocks, `4-4-4-4-8` otherwise."""
        if len(set(self.sizes)) == 1 and len(self.sizes) > 1:
            return f"{len(self.sizes)}x{self.sizes[0]}"
        return "-".join(map(str, self.sizes))

    @property
    def stage_count(self) -> int:
        return len(self.ranges) + 1  # Stage0, the input stage, and one per block range


@dataclass(frozen=True)
class CompressionMode:
    name: str
    default: CompressionSetting
    stages: dict[int, CompressionSetting] = field(default_factory=dict)

    def for_stage(self, index: int, stage_count: int) -> CompressionSetting:
        for key, settings in self.stages.items():
            if key % stage_count == index:
                return settings
        return self.default


@dataclass(frozen=True)
class SweepPlan:
    name: str
    model: str
    layouts: tuple[Layout, ...]
    modes: tuple[CompressionMode, ...]
    # Each layout's block ranges under each attention (stages.py), with every mode.
    attentions: tuple[str, ...] = (JOINT,)

    def settings(self) -> list[tuple[str, CompressionSetting]]:
        """Every setting of every mode, with the mode's name and where in it."""
        keyed = []
        for mode in self.modes:
            keyed.append((f"{mode.name}.default", mode.default))
            keyed += [(f"{mode.name}.stages.{index}", setting) for index, setting in mode.stages.items()]
        return keyed


def read_sweeps(path: Path) -> dict:
    if not Path(path).is_file():
        raise PipelineError(f"config key 'sweep.file': {path} does not exist; point it at a sweeps file")
    sweeps = yaml.safe_load(Path(path).read_text())
    if not isinstance(sweeps, dict):
        raise PipelineError(f"{path}: holds no sweeps; write `NAME: {{model: ..., layouts: ..., compression: ...}}`")
    return sweeps


def parse_layouts(entry: dict, key: str, depth: int) -> tuple[Layout, ...]:
    layouts = entry.get("layouts")
    if not isinstance(layouts, list) or not layouts:
        raise PipelineError(f"{key}.layouts: give a list of stage-size lists, e.g. [[4, 4, 4, 4, 4, 4], [8, 8, 8]]")
    parsed = []
    for index, sizes in enumerate(layouts):
        if not isinstance(sizes, list):
            raise PipelineError(f"{key}.layouts[{index}] is {sizes!r}; write a list of block counts")
        ranges = stage_ranges(sizes, depth, key=f"{key}.layouts[{index}]")
        parsed.append(Layout(tuple(sizes), tuple(ranges)))
    names = [layout.name for layout in parsed]
    if len(set(names)) != len(names):
        raise PipelineError(f"{key}.layouts names one layout twice; list each once")
    return tuple(parsed)


def parse_mode(name: str, value, key: str, stage_counts: list[int], check_settings) -> CompressionMode:
    if not isinstance(value, dict):
        raise PipelineError(f"{key} is {value!r}; write compression settings or {{default: ..., stages: ...}}")
    if "mode" in value:
        return CompressionMode(name, check_settings(value, key))
    if "default" not in value or set(value) - {"default", "stages"}:
        raise PipelineError(f"{key}: a per-stage mix takes `default:` settings and `stages: {{INDEX: settings}}`")
    default = check_settings(value["default"], f"{key}.default")
    stages = {}
    for index, settings in (value.get("stages") or {}).items():
        stage_key = f"{key}.stages.{index}"
        fewest = min(stage_counts)
        if not isinstance(index, int) or not -fewest <= index < fewest:
            raise PipelineError(
                f"{stage_key}: stage index must be an integer from {-fewest} to {fewest - 1} "
                f"(the smallest layout has {fewest} stages, Stage0 included)"
            )
        stages[index] = check_settings(settings, stage_key)
    return CompressionMode(name, default, stages)


def plan_sweep(config: dict, models: dict) -> SweepPlan | None:
    """The configured sweep, or None when the config names none; every mode's settings are
    checked against the conversion target."""
    if "sweep" not in config:
        return None

    checked = []

    def check_settings(settings: dict, key: str) -> CompressionSetting:
        checked.append((key, checked_setting(settings, key, config["conversion_target"])))
        return checked[-1][1]

    path, name = config["sweep"].get("file", "config/sweeps.yaml"), config["sweep"]["name"]
    sweeps = read_sweeps(path)
    if name not in sweeps:
        raise PipelineError(
            f"config key 'sweep.name' is {name!r}, not a sweep in {path}; use one of {', '.join(sweeps)}"
        )
    entry, key = sweeps[name], f"{path}: {name}"
    model = entry.get("model")
    if model not in models:
        raise PipelineError(f"{key}.model is {model!r}; use a key of config 'models' ({', '.join(models)})")
    layouts = parse_layouts(entry, key, models[model].shape.depth)
    modes = entry.get("compression")
    if not isinstance(modes, dict) or not modes:
        raise PipelineError(
            f"{key}.compression: give at least one mode, e.g. int8: {{mode: linear_symmetric, nbits: 8}}"
        )
    counts = [layout.stage_count for layout in layouts]
    parsed = tuple(
        parse_mode(str(mode), value, f"{key}.compression.{mode}", counts, check_settings)
        for mode, value in modes.items()
    )
    check_recipes_fit(checked, [models[model]])
    check_recipe_files(checked, config)
    return SweepPlan(name, model, layouts, parsed, parse_attentions(entry, key))


def parse_attentions(entry: dict, key: str) -> tuple[str, ...]:
    attentions = entry.get("attentions", [JOINT])
    if not isinstance(attentions, list) or not attentions:
        raise PipelineError(f"{key}.attentions is {attentions!r}; give a list, e.g. [{', '.join(ATTENTIONS)}]")
    parsed = tuple(check_attention(attention, f"{key}.attentions") for attention in attentions)
    if len(set(parsed)) != len(parsed):
        raise PipelineError(f"{key}.attentions names one attention twice; list each once")
    return parsed


def summary_plan(sweep: SweepPlan, rows: list[dict], config: dict) -> dict:
    """What `sweep-summary` reads: the rows (artifacts.sweep_rows), the bars and the device thresholds."""
    bars = fidelity_bars(config["fidelity"]["min_psnr_db"], sweep.settings())  # each recipe has its own bar
    return {"sweep": sweep.name, "model": sweep.model, "rows": rows, "min_psnr_db": bars,
            "device": config["device"], "max_stage_weight_bytes": config["sweep"]["max_stage_weight_bytes"]}  # fmt: skip
