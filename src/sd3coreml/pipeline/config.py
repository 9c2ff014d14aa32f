"""Semantic checks of a schema-valid config, and the per-model plan built from it.

The JSON schema (config/schema.yaml) checks types and fills defaults; this module checks
what a schema cannot: stage sizes against the transformer's depth, targets against each
other, compression against the conversion target, the latent size against the positional
embedding, the weights file's tensor table against its pinned config, the tokenizer files,
and that paths jobs write stay where jobs write. Every failure is one line naming the key or
file.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

from sd3coreml.compress.recipes import check_recipes_fit
from sd3coreml.compress.settings import CONVERSION_TARGETS, FolderCompression
from sd3coreml.contract import CONDITIONING as CONTRACT_CONDITIONING
from sd3coreml.contract import STAGE as CONTRACT_STAGE
from sd3coreml.contract import TEXT_ENCODERS
from sd3coreml.errors import PipelineError
from sd3coreml.inputs.checkpoint import (
    check_architecture,
    check_header_matches_config,
    load_transformer_config,
    refuse_pickle,
)
from sd3coreml.inputs.download import downloaded_paths
from sd3coreml.inputs.geometry import MMDiTShape
from sd3coreml.inputs.normalize import DIFFUSERS, ORIGINAL, check_original_header_matches_config, detect_layout
from sd3coreml.inputs.tokenizer import check_merges, check_same_tokenizers, check_vocab
from sd3coreml.pipeline.artifacts import SYNTHETIC, SYNTHETIC_NAME, check_outside_generated
from sd3coreml.stages import JOINT, BlockRange, stage_ranges, with_attention
from sd3coreml.synthetic.presets import PRESETS, shares_components

# iOS majors coremltools 9 has a ct.target for; Apple went from 18 to 26. A compiler target
# with another major (a typo such as 99.0, or 19 to 25) names no iOS release.
KNOWN_IOS_MAJORS = (13, 14, 15, 16, 17, 18, 26)
# Folder entries a compression override may name, beside the stages (the VAE is kept fp16).
OVERRIDABLE_ENTRIES = {*TEXT_ENCODERS, CONTRACT_CONDITIONING}
SAMPLER_STEPS = (2, 4)
COMPONENT_DIRS = ("text_encoder", "text_encoder_2", "vae", "tokenizer", "tokenizer_2")
# What every version of the synthetic_components job wrote. tokenizer_2/ came later (issue 13): a
# folder generated before it is remade by its job, which runs only after these checks pass.
GENERATED_COMPONENT_FILES = (
    "text_encoder/config.json", "text_encoder/model.safetensors",
    "text_encoder_2/config.json", "text_encoder_2/model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
)  # fmt: skip


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
        raise PipelineError(f"config key '{key}' is {text!r}, not a version; write an iOS version such as \"18.2\"")
    version = tuple(int(part) for part in str(text).split("."))
    if version[0] not in KNOWN_IOS_MAJORS:
        majors = ", ".join(map(str, KNOWN_IOS_MAJORS))
        raise PipelineError(
            f"config key '{key}' is {text!r}, not an iOS release coremltools 9 knows (majors {majors}); "
            'write one such as "18.2"'
        )
    return version


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


def check_compression(config: dict) -> FolderCompression:
    """Each family's (and overridden entry's) compression is one coremltools 9 runs at the conversion target."""
    compression = FolderCompression.from_config(config["compression"], config["conversion_target"])
    check_recipe_files(compression.settings(), config)
    return compression


def check_recipe_files(settings, config: dict) -> None:
    """Recipe files given among `settings` ((key, setting) pairs) lie where cleanup never looks."""
    for key, setting in settings:
        if setting.file is not None and setting.budget is None:
            check_outside_generated(setting.file, config["output_root"].rstrip("/"), f"{key}.file")


def check_overrides(config: dict, stage_counts: dict[str, int]) -> None:
    """Override keys name a folder entry every model has (VAEDecoder is kept fp16)."""
    fewest = min(stage_counts.values())
    stages = {CONTRACT_STAGE.format(index=index) for index in range(fewest)}
    for entry in config["compression"].get("overrides", {}):
        if entry not in OVERRIDABLE_ENTRIES | stages:
            named = ", ".join(sorted(OVERRIDABLE_ENTRIES))
            raise PipelineError(
                f"config key 'compression.overrides.{entry}' names no compressed folder entry; use {named} or "
                f"{CONTRACT_STAGE.format(index=0)}..{fewest - 1}"
            )


def check_sensitivity(config: dict) -> None:
    """What each analysis checks against a measurement is among what it measures."""
    sensitivity = config["sensitivity"]
    for width in sensitivity["probe_widths"]:
        if width not in sensitivity["widths"]:
            raise PipelineError(
                f"config key 'sensitivity.probe_widths' holds {width}, not one of sensitivity.widths "
                f"{sensitivity['widths']}; check a measured width"
            )


def schema_problem(config: dict, schema_path: Path) -> str:
    """`config key 'a.b': <what is wrong>`, for the first value config/schema.yaml refuses."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    key = ".".join(str(part) for part in error.absolute_path) or "(top level)"
    return f"config key '{key}': {error.message}; see config/schema.yaml"


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
    """A components folder no job of this run makes: SD3's diffusers layout, CLIP's tokenizer files."""
    layout = f"'components' must be an SD3 diffusers-layout folder with {', '.join(COMPONENT_DIRS)}"
    if not components.exists():
        raise PipelineError(
            f"config key 'components' ({components}): no such folder; fix the path, or pin the folder under 'downloads'"
        )
    for folder in (components, *(components / name for name in COMPONENT_DIRS)):
        if not folder.is_dir():
            raise PipelineError(f"{folder}: {'a file, not a folder' if folder.exists() else 'missing'}; {layout}")
    # Plain JSON and text checks: transformers is too slow to import at every parse.
    check_vocab(components / "tokenizer" / "vocab.json")
    check_merges(components / "tokenizer" / "merges.txt")
    check_same_tokenizers(components / "tokenizer", components / "tokenizer_2")


def check_generated_components(components: Path) -> None:
    """A folder the synthetic_components job wrote earlier holds what that job always wrote.

    Snakemake does not remake a folder that is there: a broken one would fail the jobs that read
    it, after their outputs were removed.
    """
    remake = f"remove {components}, and its job (synthetic_components) writes it again"
    if not components.is_dir():
        raise PipelineError(f"{components}: a file, not a folder; {remake}")
    for path in (components / name for name in GENERATED_COMPONENT_FILES):
        if not path.is_file():
            raise PipelineError(f"{path}: {'a folder, not a file' if path.is_dir() else 'missing'}; {remake}")
    check_vocab(components / "tokenizer" / "vocab.json", remake)
    check_merges(components / "tokenizer" / "merges.txt", remake)


def made_by_synthetic_job(config: dict) -> bool:
    """Whether `components` is the synthetic_components job's output, as Snakemake matches it."""
    if "synthetic" not in config:
        return False
    root = config["output_root"].rstrip("/")
    folder, name = os.path.split(config["components"])
    return folder == f"{root}/{Path(SYNTHETIC['components']).parent}" and bool(
        re.fullmatch(SYNTHETIC_NAME["components"], name)
    )


def lies_under(path: str, root: str) -> bool:
    """Whether `path` is inside `root`, compared lexically (neither need exist yet)."""
    path, root = os.path.abspath(path), os.path.abspath(root)
    return path != root and os.path.commonpath([path, root]) == root


def check_generated_paths(config: dict, downloaded: set[Path]) -> None:
    """With `synthetic`, weights and components are made by jobs, which write under output_root."""
    if "synthetic" not in config:
        return
    root = config["output_root"].rstrip("/")
    if config["synthetic"]["preset"] not in PRESETS:
        raise PipelineError(
            f"config key 'synthetic.preset' is {config['synthetic']['preset']!r}; use one of {', '.join(PRESETS)}"
        )
    made = {f"models.{key}.weights": entry["weights"] for key, entry in config["models"].items()}
    made["components"] = config["components"]
    for key, path in made.items():
        check_synthetic_preset(key, path, config["synthetic"]["preset"], root)
        # An existing file is read as it is, and a downloaded one is placed by its own job.
        if Path(path).exists() or Path(path) in downloaded or lies_under(path, root):
            continue
        raise PipelineError(
            f"config key '{key}' ({path}) lies outside output_root ({root}); synthetic inputs are written "
            f"under output_root: use {root}/checkpoints/{Path(path).name}"
        )


def check_synthetic_preset(key: str, path: str, preset: str, root: str) -> None:
    """A generated input's file name says its preset; `synthetic.preset` must say the same.

    A transformer may be of another preset wired for the same components (sd3.5-tiny beside
    tiny's text encoders and VAE).
    """
    kind = "components" if key == "components" else "transformer"
    named = re.fullmatch(SYNTHETIC_NAME[kind], Path(path).name)
    if not lies_under(path, root) or not named or named.group("preset") == preset:
        return
    if kind == "transformer" and named.group("preset") in PRESETS and shares_components(named.group("preset"), preset):
        return
    raise PipelineError(
        f"config key '{key}' ({path}) names the {named.group('preset')!r} preset but 'synthetic.preset' is "
        f"{preset!r}; the file name decides what is generated: make the two agree"
    )


def check_downloads_root(config: dict) -> None:
    root = str((config.get("downloads") or {}).get("root", "checkpoints"))
    if os.path.isabs(root) or ".." in Path(root).parts:
        raise PipelineError(
            f"config key 'downloads.root' is {root!r}; download jobs write there, so it must be a folder "
            "inside the working directory: write a relative path without '..', such as checkpoints"
        )


def require_weights_file(weights: Path, key: str) -> None:
    if not weights.is_file():
        raise PipelineError(
            f"config key '{key}' ({weights}): no such file; fix the path, or pin the file under 'downloads'"
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
    refuse_pickle(weights, f"config key 'models.{key}.weights' ({weights})")
    transformer_config = load_transformer_config(config_path)
    check_architecture(transformer_config, config_path)
    shape = MMDiTShape.from_config(transformer_config, *config["latent_size"])
    check_latent(shape, key)
    sizes_key = f"models.{key}.stage_sizes" if "stage_sizes" in entry else "stage_sizes"
    ranges = stage_ranges(entry.get("stage_sizes", config["stage_sizes"]), shape.depth, sizes_key)
    ranges = with_attention(ranges, entry.get("attention", JOINT), f"models.{key}.attention")
    # Synthetic or downloaded weights are made by a job; once they exist they are checked.
    layout = DIFFUSERS
    if weights.exists() or not made_by_job:
        require_weights_file(weights, f"models.{key}.weights")
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
    compression = check_compression(config)
    check_sensitivity(config)
    check_downloads_root(config)
    generated = "synthetic" in config
    downloaded = downloaded_paths(config)
    check_generated_paths(config, downloaded)
    # Refused here or never: a job that fails on a bad folder has already lost its outputs, which
    # Snakemake removes before it runs. Nothing is checked of what a job of this run will make.
    components = Path(config["components"])
    if made_by_synthetic_job(config):
        if components.exists():
            check_generated_components(components)
    elif components.exists() or components not in downloaded:
        check_components(components)
    models = config["models"]
    plans = {key: plan_model(config, key, generated or Path(models[key]["weights"]) in downloaded) for key in models}
    check_overrides(config, {key: len(plan.ranges) + 1 for key, plan in plans.items()})
    # A recipe names checkpoint tensors: every model's (or text encoder's) it is given to must hold them.
    check_recipes_fit(compression.settings(), plans.values(), components)
    return plans
