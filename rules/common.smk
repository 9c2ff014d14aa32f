# Config validation, the globals, and the one-line input functions (get_*) the rule files use.
# Every path comes from sd3coreml.pipeline.artifacts (ART); every decision from the library.
# rules/shared.smk (fail, step_code) is included before it.
import json
import os
import re
import shlex
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from sd3coreml.checksums import file_sha256
from sd3coreml.compress.settings import (
    A8_SLUG,
    RECIPE,
    RECIPE_BUDGET_SLUG,
    RECIPE_SLUG,
    SINGLE_THREAD_SLUG,
    SLUG_PATTERN,
    TENSOR_PALETTE_SLUG,
    CompressionSetting,
    configured_recipe,
)
from sd3coreml.errors import PipelineError
from sd3coreml.inputs.download import planned_downloads
from sd3coreml.inputs.normalize import ORIGINAL, normalized_memory_mb
from sd3coreml.contract import TEXT_ENCODERS
from sd3coreml.pipeline.artifacts import (
    ANALYSIS_PIECE_WILDCARD,
    ATTENTION_VARIANTS,
    ATTENTION_WILDCARD,
    PIECES,
    Artifacts,
    analysis_pieces,
    calibration_piece,
    folder_name,
    piece_model,
    prompts_id,
    text_encoder_of,
)
from sd3coreml.pipeline.config import plan_models, schema_problem
from sd3coreml.pipeline.disk import check_host, job_outputs, planned_memory
from sd3coreml.pipeline import jobs
from sd3coreml.release.manifest import folder_spec, manifest_request
from sd3coreml.release import toolchain
from sd3coreml.sweep.plan import plan_sweep, summary_plan
from sd3coreml.synthetic.checkpoints import transformer_memory_mb
from sd3coreml.synthetic.presets import PRESET_PATTERN


CONFIG_SCHEMA = workflow.source_path("../config/schema.yaml")
try:
    validate(config, CONFIG_SCHEMA)
except WorkflowError:
    fail(schema_problem(config, CONFIG_SCHEMA))
try:
    MODELS = plan_models(config)
    SWEEP = plan_sweep(config, MODELS)
    DOWNLOADED_FILES, DOWNLOADED_SNAPSHOTS = planned_downloads(config)
except PipelineError as error:
    fail(error)

ART = Artifacts.of(config)
ROOT = ART.root
# Core ML runs only on macOS. There the workflow also plans Core ML's own measurements, each its
# own artifact beside the executor's (rules/fidelity.smk, rules/end_to_end.smk), one job on the
# Neural Engine at a time (profiles/mac sets neural_engine=1); nothing the executor measured
# reruns. SD3COREML_PLAN_AS=macos plans as a Mac on any host, for dry runs only (`snakemake -n`;
# check_host_before_jobs refuses a run): what a Mac would replan over these results.
PLAN_AS = os.environ.get("SD3COREML_PLAN_AS", "")
if PLAN_AS not in ("", "macos"):
    fail(f"SD3COREML_PLAN_AS={PLAN_AS}: the one host to plan as is macos (SD3COREML_PLAN_AS=macos snakemake -n)")
ON_MACOS = sys.platform == "darwin" or PLAN_AS == "macos"
# What Core ML adds to each packages folder's reports there (`fidelity`, `verify`).
COREML_FIDELITY = ["fidelity_coreml.json"] if ON_MACOS else []
COREML_END_TO_END = ["end_to_end_coreml.json"] if ON_MACOS else []
# Jobs rerun on another release of a pinned package, not on a local label or Python's patch level
# (release/toolchain.py); a folder records the exact versions of the toolchain that built it.
TOOLCHAIN = toolchain.installed_versions()
TOOLCHAIN_FINGERPRINT = toolchain.fingerprint(TOOLCHAIN)
TOOLCHAIN_RECORD = toolchain.record_path(ROOT, TOOLCHAIN)
VERIFY_SEED = config["fidelity"]["seed"]
# Each model's calibration (recipes made from a budget, rules/sensitivity.smk): its sampler's steps
# and shift run on the configured prompts; the wildcard takes only these names.
CALIBRATIONS = {
    key: ART.calibration_name(config["sensitivity"], plan.steps, config["models"][key]["timestep_shift"])
    for key, plan in MODELS.items()
}
CALIBRATION_WILDCARD = "|".join(map(re.escape, CALIBRATIONS.values()))
# The text encoders' calibration is named by the prompts alone (rules/sensitivity.smk).
TEXT_PROMPTS_ID = prompts_id(config["sensitivity"]["prompts"])
CALIBRATION_PROMPTS = " ".join(f"--prompt {shlex.quote(prompt)}" for prompt in config["sensitivity"]["prompts"])
# verify-package's and end-to-end's runner arguments: what predicts, and for Core ML under what.
EXECUTOR_RUNNER = "executor"
COREML_RUNNER = f"coreml --coreml-compute-units {config['fidelity']['coreml_compute_units']}"


def check_host_before_jobs():
    """Before any job: a folder for every output, Apple's compiler if compiles are planned, disk room, memory."""
    if PLAN_AS:
        fail(f"SD3COREML_PLAN_AS={PLAN_AS} only plans (snakemake -n); unset it to run jobs on this host")
    try:
        planned = list(workflow.dag.needrun_jobs())
        check_host(ART, job_outputs(planned), MODELS, config, planned_memory(planned, workflow.local_exec))
    except PipelineError as error:
        fail(error)


def get_transformer_weights(wildcards):
    model = MODELS[wildcards.model]
    return ART.normalized_transformer(model.key) if model.layout == ORIGINAL else str(model.weights)


def get_original_weights(wildcards):
    return str(MODELS[wildcards.model].weights)


def get_transformer_config(wildcards):
    # A repository file: a param counted by content (get_transformer_config_sha256), so that a
    # fresh clone, newer than results copied beside it, reruns nothing.
    return str(MODELS[wildcards.model].config_path)


def get_transformer_config_sha256(wildcards):
    return file_sha256(MODELS[wildcards.model].config_path)


def get_piece_args(wildcards):
    return jobs.piece_args(dict(wildcards.items()))


def get_attention_args(wildcards):
    return jobs.attention_args(dict(wildcards.items()))


def get_attention_checks(wildcards):
    """A folder's split-attention packages' figures against their joint twins (none when all joint):
    they must have passed; their times do not count, as the fidelity report's."""
    return ancient(ART.attention_checks(wildcards.model, MODELS[wildcards.model].ranges))


def verified_packages_of(piece):
    """The fp16 package and, when compressed, its compressed twin."""

    def get_verified_packages(wildcards):
        return sorted({ART.piece(piece, precision).format(**wildcards) for precision in ("fp16", wildcards.precision)})

    return get_verified_packages


def folder_inputs_of(kind):
    def get_folder_inputs(wildcards):
        return ART.folder_entries(wildcards.model, MODELS[wildcards.model].ranges, kind)

    return get_folder_inputs


def folder_spec_of(kind):
    """What assemble-folder reads for a model's folder of `kind`: its entries and manifest request."""

    def get_folder_spec(wildcards):
        model = MODELS[wildcards.model]
        compiled = ART.compiled_from(model.key, model.ranges) if kind == "app" else None
        entries = ART.folder_entries(model.key, model.ranges, kind)
        recipes = ART.generated_recipes(model.key, model.ranges)
        request = manifest_request(model, config, ART.compression, TOOLCHAIN_RECORD, kind, recipes)
        return folder_spec(entries, request, compiled)

    return get_folder_spec


def get_compiled_packages(wildcards):
    return list(ART.compiled_from(wildcards.model, MODELS[wildcards.model].ranges).values())


def get_fidelity_measurements(wildcards):
    return ART.measurements(wildcards.model, MODELS[wildcards.model].ranges)


def get_fidelity_report_spec(wildcards):
    return jobs.fidelity_report_spec(get_fidelity_measurements(wildcards), config, ART.compression)


def get_coreml_measurements(wildcards):
    return ART.coreml_measurements(wildcards.model, MODELS[wildcards.model].ranges)


def get_coreml_report_inputs(wildcards):
    """Core ML's report reads the executor's measurement of each entry and Core ML's (`<entry>_coreml`)."""
    coreml = {f"{entry}_coreml": path for entry, path in get_coreml_measurements(wildcards).items()}
    return {**get_fidelity_measurements(wildcards), **coreml}


def get_coreml_report_spec(wildcards):
    return jobs.fidelity_report_spec(
        get_fidelity_measurements(wildcards), config, ART.compression, get_coreml_measurements(wildcards)
    )


def get_fidelity_gates(wildcards):
    """The reports a folder needs passed: the executor's; on macOS with fidelity.enforce_coreml, Core ML's too."""
    coreml = ON_MACOS and config["fidelity"]["enforce_coreml"]
    return {"fidelity": ART.report(wildcards.model, "fidelity.json"),
            **({"fidelity_coreml": ART.report(wildcards.model, "fidelity_coreml.json")} if coreml else {})}  # fmt: skip


def get_coreml_end_to_end_runner(wildcards):
    return f"{COREML_RUNNER} --enforce-coreml {'yes' if config['fidelity']['enforce_coreml'] else 'no'}"


def get_compression_flags(wildcards):
    return CompressionSetting.from_slug(wildcards.compression).flags


def get_sampler_steps(wildcards):
    return MODELS[wildcards.model].steps


def get_end_to_end_bar(wildcards):
    return jobs.end_to_end_bar(config, wildcards.model)


def get_app_chain_mem_mb(wildcards, input):
    return jobs.app_chain_mem_mb([*input.shared, *input.mmdit])


def get_end_to_end_mem_mb(wildcards, input):
    return jobs.end_to_end_mem_mb(Path(input.weights))


def get_synthetic_transformer_mem_mb(wildcards):
    return transformer_memory_mb(wildcards.preset)


def get_normalize_mem_mb(wildcards, input):
    return normalized_memory_mb(input.original)


def get_sweep_inputs(wildcards):
    return ART.sweep_inputs(SWEEP, ON_MACOS)


def chain_inputs(packages: dict) -> dict[str, list[str]]:
    return {part: list(entries.values()) for part, entries in packages.items()}


def get_fp16_chain_inputs(wildcards):
    return chain_inputs(ART.app_chain_packages(SWEEP))


def get_mode_check_inputs(wildcards):
    return {**chain_inputs(ART.app_chain_packages(SWEEP, wildcards.mode)), "fp16_chain": ART.sweep_fp16_chain()}


def get_mode_check_spec(wildcards):
    """The end-to-end chain's spec: for one mode, or (no `mode` wildcard) the fp16 MMDiT every mode is held against."""
    model, mode = MODELS[SWEEP.model], getattr(wildcards, "mode", None)
    spec = {**ART.app_chain_packages(SWEEP, mode), "mode": mode, "layout": SWEEP.layouts[0].name,
            "prompt": config["fidelity"]["prompt"], "seed": VERIFY_SEED, "steps": model.steps,
            "shift": config["models"][SWEEP.model]["timestep_shift"], "latent": config["latent_size"],
            "in_channels": model.shape.in_channels, "joint_attention_dim": model.shape.joint_attention_dim}  # fmt: skip
    return json.dumps(spec, sort_keys=True)


def get_sweep_plan_json(wildcards):
    return json.dumps(summary_plan(SWEEP, ART.sweep_rows(SWEEP, ON_MACOS), config), sort_keys=True)


def get_built_folders(include_packages=False):
    try:
        return ART.built_folders(MODELS, include_packages)
    except PipelineError as error:
        fail(error)


def get_timestep_shift(wildcards):
    return config["models"][wildcards.model]["timestep_shift"]


def recipe_of_package(wildcards):
    """A recipe package's setting with its file: the configured one, or the recipe made for its budget."""
    return ART.recipe_for_package(wildcards.path, configured_recipe(wildcards.compression, ART.compression, SWEEP))


def get_recipe_file(wildcards):
    return recipe_of_package(wildcards).file


def get_recipe_flags(wildcards):
    return recipe_of_package(wildcards).flags


def get_model_analyses(wildcards):
    model = MODELS[wildcards.model]
    return [ART.analysis(model.key, CALIBRATIONS[model.key], piece) for piece in analysis_pieces(model.shape.depth)]


def get_activation_calibration(wildcards):
    """The calibration whose inputs a package's piece receives: its model's, or the text encoders'."""
    if text_encoder_of(wildcards.path):
        return ART.text_calibration(TEXT_PROMPTS_ID)
    model = piece_model(wildcards.path)
    return ART.calibration(model, CALIBRATIONS[model])


def get_activation_piece(wildcards):
    return calibration_piece(wildcards.path)


def get_activations_recipe(wildcards):
    """An 8-bit-activation package's recipe file, where its weights' setting is a recipe."""
    setting = CompressionSetting.from_slug(wildcards.compression)
    return [get_recipe_file(wildcards)] if setting.mode == RECIPE else []


def get_activations_flags(wildcards):
    setting = CompressionSetting.from_slug(wildcards.compression)
    return get_recipe_flags(wildcards) if setting.mode == RECIPE else setting.flags


def get_text_analyses(wildcards):
    return [ART.text_analysis(TEXT_PROMPTS_ID, entry) for entry in TEXT_ENCODERS]


def get_recipe_budget(wildcards):
    return CompressionSetting.from_slug(wildcards.compression).budget_arg


def get_generated_recipes(wildcards):
    return list(ART.generated_recipes(wildcards.model, MODELS[wildcards.model].ranges).values())
