"""Semantic checks of a schema-valid config, and the per-model plan built from it.

The JSON schema (config/schema.yaml) checks types and fills defaults; this module checks
what a schema cannot: stage sizes against the transformer's depth, targets against each
other, the latent size against the positional embedding, and the weights file's tensor
table against its pinned config. Every failure is one line naming the key or file.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from sd3coreml.checkpoint import check_header_matches_config, load_transformer_config
from sd3coreml.download import downloaded_paths
from sd3coreml.errors import PipelineError
from sd3coreml.geometry import MMDiTShape
from sd3coreml.normalize import DIFFUSERS, ORIGINAL, check_original_header_matches_config, detect_layout
from sd3coreml.plan import BlockRange, stage_ranges

# Spec versions of ML Program targets; iOS15 lacks fp16 inputs/outputs and is refused.
CONVERSION_TARGETS = {"iOS16": 16, "iOS17": 17, "iOS18": 18}
# Palettization of these sizes and int8 per channel need iOS16+; per_grouped_channel would need iOS18.
SAMPLER_STEPS = (2, 4)
COMPONENT_DIRS = ("text_encoder", "text_encoder_2", "vae", "tokenizer")


@dataclass(frozen=True)
class ModelPlan:
    """What one model's folders are built from."""

    key: str
    weights: Path
    config_path: Path
    shape: MMDiTShape
    ranges: tuple[BlockRange, ...]
    steps: int
    # "original": joint_blocks.* names, normalised to the diffusers layout by a job first.
    layout: str = DIFFUSERS


def parse_version(text: str, key: str) -> tuple[int, ...]:
    if not re.fullmatch(r"\d+(\.\d+){0,2}", str(text)):
        raise PipelineError(f"config key '{key}' is {text!r}; write a version such as \"18.2\"")
    return tuple(int(part) for part in str(text).split("."))


def check_targets(config: dict) -> None:
    target = config["conversion_target"]
    if target not in CONVERSION_TARGETS:
        raise PipelineError(f"config key 'conversion_target' is {target!r}; use one of {', '.join(CONVERSION_TARGETS)}")
    compiler_target = parse_version(config["compiler"]["deployment_target"], "compiler.deployment_target")
    if compiler_target < (CONVERSION_TARGETS[target],):
        raise PipelineError(
            f"config key 'compiler.deployment_target' ({config['compiler']['deployment_target']}) is older "
            f"than conversion_target {target}; raise it to at least {CONVERSION_TARGETS[target]}.0"
        )


def check_compression(config: dict) -> None:
    for family, settings in config["compression"].items():
        key = f"compression.{family}"
        if settings["mode"] != "none" and "nbits" not in settings:
            raise PipelineError(f"config key '{key}.nbits' is missing; set 4, 6 or 8")
        if settings["mode"] == "linear_symmetric" and settings["nbits"] != 8:
            raise PipelineError(f"config key '{key}.nbits' must be 8 for linear_symmetric (int8) weights")
        if settings["mode"] == "palettize" and settings.get("granularity", "per_tensor") != "per_tensor":
            raise PipelineError(f"config key '{key}.granularity' must be per_tensor for palettize")


def check_latent(shape: MMDiTShape, key: str) -> None:
    for side in (shape.latent_height, shape.latent_width):
        if side <= 0 or side % shape.patch_size:
            raise PipelineError(
                f"config key 'latent_size' holds {side}, not a positive multiple of the patch size "
                f"{shape.patch_size} of model '{key}'"
            )
        if side // shape.patch_size > shape.pos_embed_max_size:
            limit = shape.pos_embed_max_size * shape.patch_size
            raise PipelineError(
                f"config key 'latent_size' holds {side}, beyond the positional embedding of model "
                f"'{key}' (at most {limit}); lower it"
            )


def check_components(components: Path) -> None:
    for name in COMPONENT_DIRS:
        if not (components / name).is_dir():
            raise PipelineError(
                f"{components / name}: missing; 'components' must be an SD3 diffusers-layout folder "
                f"with {', '.join(COMPONENT_DIRS)}"
            )


def sampler_steps(entry: dict, key: str) -> int:
    """The app's step count for a model: `models.K.steps`, or the N of a key named `Nstep`."""
    if "steps" in entry:
        return entry["steps"]
    named = re.fullmatch(r"(\d+)step", key)
    if not named or int(named.group(1)) not in SAMPLER_STEPS:
        raise PipelineError(f"config key 'models.{key}.steps' is missing; set the app's step count, 2 or 4")
    return int(named.group(1))


def plan_model(config: dict, key: str, made_by_job: bool) -> ModelPlan:
    entry = config["models"][key]
    weights, config_path = Path(entry["weights"]), Path(entry["config"])
    transformer_config = load_transformer_config(config_path)
    if transformer_config.get("dual_attention_layers") or transformer_config.get("qk_norm"):
        raise PipelineError(
            f"{config_path}: dual attention layers or qk_norm (SD3.5) are not supported; use an SD3 Medium config"
        )
    shape = MMDiTShape.from_config(transformer_config, *config["latent_size"])
    check_latent(shape, key)
    sizes_key = f"models.{key}.stage_sizes" if "stage_sizes" in entry else "stage_sizes"
    ranges = stage_ranges(entry.get("stage_sizes", config["stage_sizes"]), shape.depth, sizes_key)
    # Synthetic or downloaded weights are made by a job; once they exist they are checked.
    layout = DIFFUSERS
    if weights.exists() or not made_by_job:
        layout = detect_layout(weights)
        if layout == ORIGINAL:
            # The normalised file is checked in full by its job; here depth and widths only.
            check_original_header_matches_config(weights, transformer_config, config_path)
        else:
            check_header_matches_config(weights, transformer_config, config_path)
    return ModelPlan(key, weights, config_path, shape, tuple(ranges), sampler_steps(entry, key), layout)


def plan_models(config: dict) -> dict[str, ModelPlan]:
    """Check the whole config and return each model's plan; raises PipelineError."""
    check_targets(config)
    check_compression(config)
    generated = "synthetic" in config
    downloaded = downloaded_paths(config)
    components = Path(config["components"])
    if components.exists() or not (generated or components in downloaded):
        check_components(components)
    models = config["models"]
    return {key: plan_model(config, key, generated or Path(models[key]["weights"]) in downloaded) for key in models}
