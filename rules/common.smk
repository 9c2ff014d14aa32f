# Config validation, the plan, and the input functions every rule file uses.
import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from sd3coreml.release import toolchain
from sd3coreml.checksums import file_sha256
from sd3coreml.pipeline.code_closure import CodeBase
from sd3coreml.release.compile import require_compiler
from sd3coreml.pipeline.config import check_compression_settings, plan_models, schema_problem
from sd3coreml.pipeline.disk import component_weight_files, require_creatable, require_free_space
from sd3coreml.errors import PipelineError
from sd3coreml.inputs.normalize import ORIGINAL, normalized_memory_mb
from sd3coreml.pipeline.plan import compression_settings, entry_compression, latent_slug, manifest_request, quantization_slug
from sd3coreml.contract import CONDITIONING as CONTRACT_CONDITIONING
from sd3coreml.contract import STAGE as CONTRACT_STAGE
from sd3coreml.contract import TEXT_ENCODERS
from sd3coreml.contract import TOKENIZER_FILES
from sd3coreml.sweep.plan import plan_sweep


def fail(message):
    # One line and a non-zero exit, before any job runs.
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


CONFIG_SCHEMA = workflow.source_path("../config/schema.yaml")
try:
    validate(config, CONFIG_SCHEMA)
except WorkflowError:
    fail(schema_problem(config, CONFIG_SCHEMA))

try:
    MODELS = plan_models(config)
except PipelineError as error:
    fail(error)

ROOT = config["output_root"].rstrip("/")
# Core ML's own measurements (compute plan, load, predict) exist only on macOS.
ON_MACOS = sys.platform == "darwin"
# On a Mac the fidelity checks predict with Core ML too: one job on the Neural Engine at a
# time, measurement or check (profiles/mac sets neural_engine=1).
NEURAL_ENGINE_JOBS = 1 if ON_MACOS else 0
# Directory names of compressed packages (plan.quantization_slug); `fp16` is the unconverted one.
COMPRESSION_SLUG = (
    r"int[48]_linear_symmetric_per_(channel|tensor|block\d+)|palettize[468]_per_(tensor|grouped_channel\d+)"
)
TARGET = config["conversion_target"]
LATENT = latent_slug(config["latent_size"])
TOOLCHAIN = toolchain.installed_versions()
TOOLCHAIN_FINGERPRINT = toolchain.fingerprint(TOOLCHAIN)
# The code of each step, named by content (code_closure.py), from this checkout's src/.
CODE = CodeBase(Path(workflow.basedir) / "src")


def step_code(step):
    """Fingerprint of what `python -m sd3coreml STEP` runs: a job reruns when any of it changes."""
    return CODE.fingerprint(step)


def compressed(path_stem, settings):
    return f"{path_stem}.{quantization_slug(settings)}.mlpackage"


def compression_of(entry, family):
    return entry_compression(config["compression"], entry, family)


def mmdit_dir(model):
    return f"{ROOT}/mmdit/{model}/{TARGET}"


def conditioning_package(model):
    return compressed(f"{mmdit_dir(model)}/conditioning", compression_of(CONTRACT_CONDITIONING, "mmdit"))


def stage_stems(model, ranges):
    """Stage0..N in app order, without precision; block ranges are named by content, not by index."""
    stem = f"{mmdit_dir(model)}/{LATENT}"
    return [f"{stem}/input", *(f"{stem}/{block_range.slug}" for block_range in ranges)]


def stage_packages(model):
    stems = stage_stems(model, MODELS[model].ranges)
    return [compressed(stem, compression_of(CONTRACT_STAGE.format(index=k), "mmdit")) for k, stem in enumerate(stems)]


def text_encoder_package(name):
    return compressed(f"{ROOT}/text_encoders/{TARGET}/{name}", compression_of(name, "text_encoders"))


def vae_package():
    return f"{ROOT}/vae/{TARGET}/{LATENT}/VAEDecoder.fp16.mlpackage"


def folder_packages(model):
    """Contract name (without suffix) -> package path, for one model's folder."""
    entries = {name: text_encoder_package(name) for name in TEXT_ENCODERS}
    entries["VAEDecoder"] = vae_package()
    entries[CONTRACT_CONDITIONING] = conditioning_package(model)
    for index, package in enumerate(stage_packages(model)):
        entries[CONTRACT_STAGE.format(index=index)] = package
    return entries


def tokenizer_files():
    return {name: f"{ROOT}/tokenizer/{name}" for name in TOKENIZER_FILES}


def compiled(package):
    relative = Path(package).relative_to(ROOT).with_suffix(".mlmodelc")
    return f"{ROOT}/compiled/ios{config['compiler']['deployment_target']}/{relative}"


def compiler_command(wildcards):
    # A function, so Snakemake leaves the template's {package} fields alone.
    return config["compiler"]["command"]


def text_encoder_folder(wildcards):
    return TEXT_ENCODERS[wildcards.encoder]


def normalized_transformer(model):
    return f"{ROOT}/checkpoints/normalized/{model}.safetensors"


def transformer_inputs(wildcards):
    """The diffusers-format weights the MMDiT jobs read: the normalised copy of an original-layout file."""
    model = MODELS[wildcards.model]
    weights = normalized_transformer(wildcards.model) if model.layout == ORIGINAL else str(model.weights)
    return {"weights": weights}


def original_transformer_inputs(wildcards):
    return {"original": str(MODELS[wildcards.model].weights)}


def transformer_config(wildcards):
    # A repository file: a param, counted by content (transformer_config_sha256), so that a
    # fresh clone, newer than results copied beside it, reruns nothing.
    return str(MODELS[wildcards.model].config_path)


def transformer_config_sha256(wildcards):
    return file_sha256(MODELS[wildcards.model].config_path)


def end_to_end_mem_mb(wildcards, input):
    # Measured at SD3 Medium size: 16.7 GiB peak for 4.2 GB of fp16 weights (the reference
    # holds them in fp32 beside the packages'); before the weights exist, assume that size.
    weights = Path(input.weights)
    return max(2000, int(4.4 * weights.stat().st_size / 2**20)) if weights.exists() else 18000


def normalize_mem_mb(wildcards, input):
    return normalized_memory_mb(input.original)


def folder_manifest(model, kind):
    return manifest_request(MODELS[model], config, TOOLCHAIN, kind)


def built_folders(include_packages=False):
    """The configured folders on disk (and the packages folders, about to be built, if asked)."""
    folders = []
    for model in MODELS:
        packages, app = f"{ROOT}/coremlsd3_{model}_packages", f"{ROOT}/coremlsd3_{model}"
        folders += [path for path in (packages, app) if Path(path).is_dir() or (include_packages and path == packages)]
    if not folders:
        fail(f"{ROOT}: no coremlsd3_* folder built yet; build one first, e.g. snakemake {packages_targets()[0]}")
    return folders


def build_record(folder_name):
    """Host and time facts of a folder's build: outside the folder, so the folder stays reproducible."""
    return f"{ROOT}/reports/{folder_name}/build_host.json"


def planned_jobs():
    return list(workflow.dag.needrun_jobs())


def weights_to_convert(jobs):
    """The input weights of the conversions planned: what the disk estimate is made from."""
    models = {job.wildcards.get("model") for job in jobs if job.rule.name.startswith("mmdit_")}
    files = [MODELS[model].weights for model in models if model]
    if any(job.rule.name in ("text_encoder", "vae_decoder") for job in jobs):
        files += component_weight_files(Path(config["components"]))
    return files


def planned_outputs(jobs):
    """Every path the planned jobs write: outputs, logs, benchmarks."""
    for job in jobs:
        yield from job.output
        yield from job.log
        if job.benchmark:
            yield job.benchmark


def check_host_before_jobs():
    """Before any job runs: a folder for every output, Apple's compiler if compiles are planned, disk room."""
    jobs = planned_jobs()
    try:
        require_creatable(planned_outputs(jobs))
        if any(job.rule.name == "compile_package" for job in jobs):
            require_compiler(config["compiler"]["command"], " or ".join(packages_targets()))
        require_free_space(Path(ROOT), weights_to_convert(jobs))
    except PipelineError as error:
        fail(error)


def packages_targets():
    return [f"coremlsd3_{model}_packages" for model in MODELS]


def packages_folder_inputs(wildcards):
    entries = {f"{name}.mlpackage": path for name, path in folder_packages(wildcards.model).items()}
    return {**entries, **tokenizer_files()}


def app_folder_inputs(wildcards):
    entries = {f"{name}.mlmodelc": compiled(path) for name, path in folder_packages(wildcards.model).items()}
    return {**entries, **tokenizer_files()}


def folder_spec(entries, manifest, packages=None):
    spec = {"entries": entries, "manifest": manifest, **({"packages": packages} if packages else {})}
    return json.dumps(spec, sort_keys=True)


def compiled_from(wildcards):
    """Each compiled entry's package: the app's view of the folder is read from them."""
    return {f"{name}.mlmodelc": path for name, path in folder_packages(wildcards.model).items()}


def packages_folder_spec(wildcards, input):
    entries = {name: input[name] for name in packages_folder_inputs(wildcards)}
    return folder_spec(entries, folder_manifest(wildcards.model, "packages"))


def app_folder_spec(wildcards, input):
    entries = {name: input[name] for name in app_folder_inputs(wildcards)}
    manifest = folder_manifest(wildcards.model, "app")
    manifest["compiler"] = {
        "command": config["compiler"]["command"],
        "deployment_target": config["compiler"]["deployment_target"],
    }
    return folder_spec(entries, manifest, compiled_from(wildcards))


def measurement_of(package):
    """Where a package's fidelity figures go: its path under fidelity/, precision kept."""
    relative = Path(package).relative_to(ROOT)
    return f"{ROOT}/fidelity/{relative.with_suffix('')}.json"


def verified_packages(stem):
    """Input function: the fp16 package and, when compressed, its compressed twin."""

    def packages(wildcards):
        path = stem.format(**wildcards)
        return sorted({f"{path}.fp16.mlpackage", f"{path}.{wildcards.precision}.mlpackage"})

    return packages


def fidelity_measurements(model):
    """Folder entry -> measurement JSON, for one model's packages folder."""
    return {name: measurement_of(package) for name, package in folder_packages(model).items()}


def fidelity_report_args(wildcards):
    pairs = fidelity_measurements(wildcards.model).items()
    return " ".join(f"--measurement {entry}={path}" for entry, path in pairs)


def coreml_policy_args(wildcards):
    fidelity = config["fidelity"]
    enforce = " --enforce-coreml" if fidelity["enforce_coreml"] else ""
    return f"--coreml-min-psnr-db {fidelity['coreml_min_psnr_db']}{enforce}"


def fidelity_report(model):
    return f"{ROOT}/reports/coremlsd3_{model}_packages/fidelity.json"


def end_to_end_report(model):
    return f"{ROOT}/reports/coremlsd3_{model}_packages/end_to_end.json"


def sampler_steps(wildcards):
    return MODELS[wildcards.model].steps


def end_to_end_bar(wildcards):
    default = config["fidelity"]["end_to_end_min_psnr_db"]
    return config["models"][wildcards.model].get("end_to_end_min_psnr_db", default)


def compression_args(wildcards):
    """compress-package's settings flags for a compression directory name."""
    settings = compression_settings(wildcards.compression)
    sizes = {"group_size": "--group-size", "block_size": "--block-size"}
    args = [f"--mode {settings['mode']} --nbits {settings['nbits']} --granularity {settings['granularity']}"]
    return " ".join(args + [f"{flag} {settings[key]}" for key, flag in sizes.items() if key in settings])


try:
    SWEEP = plan_sweep(config, MODELS, lambda settings, key: check_compression_settings(settings, key, TARGET))
except PipelineError as error:
    fail(error)


def stage_jobs_benchmarks(stem, slug):
    """The benchmark files of the jobs that make and measure one stage package."""
    relative = Path(stem).relative_to(ROOT)
    files = [f"{ROOT}/benchmarks/{relative}.tsv", f"{ROOT}/benchmarks/fidelity/{relative}.{slug}.tsv"]
    if slug != "fp16":
        files.append(f"{ROOT}/benchmarks/compress/{relative}.{slug}.tsv")
    return files


def sweep_stages(layout, mode):
    """Stage0..N of one sweep layout under one mode, with what the summary reads of each."""
    stages = []
    for index, stem in enumerate(stage_stems(SWEEP.model, layout.ranges)):
        settings = mode.for_stage(index, layout.stage_count)
        package = compressed(stem, settings)
        stage = {"stage": index, "package": package, "fp16_package": f"{stem}.fp16.mlpackage"}
        stage["measurement"] = measurement_of(package)
        stage["benchmarks"] = stage_jobs_benchmarks(stem, quantization_slug(settings))
        if ON_MACOS:
            stage["device"] = device_profile_of(package)
        stages.append(stage)
    return stages


def device_profile_of(package):
    """Where Core ML's measurement of a package goes (macOS only)."""
    return f"{ROOT}/device/{Path(package).relative_to(ROOT).with_suffix('')}.json"


def sweep_rows():
    return [
        {"layout": layout.name, "sizes": list(layout.sizes), "mode": mode.name, "stages": sweep_stages(layout, mode)}
        for layout in SWEEP.layouts
        for mode in SWEEP.modes
    ]


def sweep_inputs(wildcards):
    stages = [stage for row in sweep_rows() for stage in row["stages"]]
    return {
        "packages": sorted({stage[key] for stage in stages for key in ("package", "fp16_package")}),
        "measurements": sorted({stage["measurement"] for stage in stages}),
        "device_profiles": sorted({stage["device"] for stage in stages if "device" in stage}),
    }


def sweep_plan_json(wildcards):
    plan = {"sweep": SWEEP.name, "model": SWEEP.model, "rows": sweep_rows()}
    return json.dumps({**plan, "min_psnr_db": config["fidelity"]["min_psnr_db"], "device": config["device"]}, sort_keys=True)


def referenced_targets():
    """What a user of this config can ask for: its artifacts are what cleanup keeps."""
    folders = [f"coremlsd3_{model}{suffix}" for model in MODELS for suffix in ("_packages", "")]
    return folders + ["verify"] + (["sweep"] if SWEEP else [])
