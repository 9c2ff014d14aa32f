# Config validation, the globals, and the one-line input functions (get_*) the rule files use.
# Every path comes from sd3coreml.pipeline.artifacts (ART); every decision from the library.
# rules/shared.smk (fail, step_code) is included before it.
import json
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from sd3coreml.checksums import file_sha256
from sd3coreml.compress.settings import (
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
from sd3coreml.pipeline.artifacts import ATTENTION_VARIANTS, ATTENTION_WILDCARD, PIECES, Artifacts, folder_name
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
# Core ML's own measurements exist only on macOS; there the fidelity checks predict with Core ML
# too, one job on the Neural Engine at a time (profiles/mac sets neural_engine=1).
ON_MACOS = sys.platform == "darwin"
NEURAL_ENGINE_JOBS = 1 if ON_MACOS else 0
TOOLCHAIN = toolchain.installed_versions()
TOOLCHAIN_FINGERPRINT = toolchain.fingerprint(TOOLCHAIN)
VERIFY_SEED = config["fidelity"]["seed"]
COREML = {"runner": "executor+coreml" if ON_MACOS else "executor", "units": config["fidelity"]["coreml_compute_units"]}


def check_host_before_jobs():
    """Before any job: a folder for every output, Apple's compiler if compiles are planned, disk room, memory."""
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
        return folder_spec(entries, manifest_request(model, config, TOOLCHAIN, kind), compiled)

    return get_folder_spec


def get_compiled_packages(wildcards):
    return list(ART.compiled_from(wildcards.model, MODELS[wildcards.model].ranges).values())


def get_fidelity_measurements(wildcards):
    return ART.measurements(wildcards.model, MODELS[wildcards.model].ranges)


def get_fidelity_report_spec(wildcards):
    return jobs.fidelity_report_spec(get_fidelity_measurements(wildcards), config)


def get_enforce_coreml(wildcards):
    return "yes" if config["fidelity"]["enforce_coreml"] else "no"


def get_compression_flags(wildcards):
    return CompressionSetting.from_slug(wildcards.compression).flags


def get_sampler_steps(wildcards):
    return MODELS[wildcards.model].steps


def get_end_to_end_bar(wildcards):
    return jobs.end_to_end_bar(config, wildcards.model)


def get_end_to_end_mem_mb(wildcards, input):
    return jobs.end_to_end_mem_mb(Path(input.weights))


def get_synthetic_transformer_mem_mb(wildcards):
    return transformer_memory_mb(wildcards.preset)


def get_normalize_mem_mb(wildcards, input):
    return normalized_memory_mb(input.original)


def get_sweep_inputs(wildcards):
    return ART.sweep_inputs(SWEEP, ON_MACOS)


def get_sweep_plan_json(wildcards):
    return json.dumps(summary_plan(SWEEP, ART.sweep_rows(SWEEP, ON_MACOS), config), sort_keys=True)


def get_built_folders(include_packages=False):
    try:
        return ART.built_folders(MODELS, include_packages)
    except PipelineError as error:
        fail(error)


def get_timestep_shift(wildcards):
    return config["models"][wildcards.model]["timestep_shift"]


def get_recipe_file(wildcards):
    return configured_recipe(wildcards.compression, ART.compression, SWEEP).file


def get_recipe_flags(wildcards):
    return configured_recipe(wildcards.compression, ART.compression, SWEEP).flags
