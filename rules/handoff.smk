# The Mac hand-off (config/handoff.yaml): each packages folder named under `handoff.folders`,
# built elsewhere and copied here, compiled into the app's folder. Only compile and folder
# jobs: no models, no checkpoints, no toolchain fingerprint (the packages are what their
# manifest says they are, and the folder check proves it before the first job).
from sd3coreml.frameworks import skip_unused_frameworks
from sd3coreml.pipeline.artifacts import build_record_path, folder_name, handoff_compiled, log_path, sums_path
from sd3coreml.release.compile import require_compiler
from sd3coreml.errors import PipelineError
from sd3coreml.pipeline.handoff import app_folder_entries, app_folder_spec, check_handoff_folders, plan_handoff


try:
    HANDOFF = plan_handoff(config["handoff"])
except PipelineError as error:
    fail(error)

ROOT = config.get("output_root", "results").rstrip("/")
DEPLOYMENT_TARGET = config["compiler"]["deployment_target"]


def get_handoff_package(wildcards):
    return str(HANDOFF[wildcards.key].packages_dir / f"{wildcards.name}.mlpackage")


def get_handoff_entries(wildcards):
    return app_folder_entries(HANDOFF[wildcards.key], ROOT, DEPLOYMENT_TARGET)


def get_handoff_spec(wildcards):
    return app_folder_spec(HANDOFF[wildcards.key], ROOT, config["compiler"])


onstart:
    # Reading package specs needs coremltools' protobuf classes only; its framework probing
    # would import torch into the Snakemake process for seconds.
    skip_unused_frameworks("torch", "sklearn", "transformers")
    try:
        require_compiler(config["compiler"]["command"], "the packages folders on the converting machine")
        check_handoff_folders(HANDOFF)
    except PipelineError as error:
        fail(error)


wildcard_constraints:
    key="|".join(HANDOFF),
    name="[A-Za-z0-9]+",


localrules:
    handoff_compile,


rule handoff_compile:
    input:
        package=get_handoff_package,
    output:
        directory(handoff_compiled(ROOT, "{key}", DEPLOYMENT_TARGET)),
    params:
        code=step_code("compile-package"),
        command=lambda wildcards: config["compiler"]["command"],
        deployment_target=DEPLOYMENT_TARGET,
    log:
        log_path(ROOT, "compile/handoff/{key}/{name}"),
    shell:
        "python -m sd3coreml compile-package --package {input.package:q} --out {output:q}"
        " --compiler {params.command:q} --deployment-target {params.deployment_target} > {log:q} 2>&1"


rule handoff_app_folder:
    input:
        unpack(get_handoff_entries),
    output:
        sums=sums_path(ROOT, folder_name("{key}", "app")),
        record=build_record_path(ROOT, folder_name("{key}", "app")),
    params:
        code=step_code("assemble-folder"),
        spec=get_handoff_spec,
    log:
        log_path(ROOT, f"folders/{folder_name('{key}', 'app')}"),
    shell:
        "echo {params.spec:q} | python -m sd3coreml assemble-folder --spec - --out $(dirname {output.sums})"
        " --build-record {output.record} > {log} 2>&1"


rule all:
    default_target: True
    input:
        [sums_path(ROOT, folder_name(key, "app")) for key in HANDOFF],


for key in HANDOFF:

    rule:
        name:
            folder_name(key, "app")
        input:
            sums_path(ROOT, folder_name(key, "app")),
