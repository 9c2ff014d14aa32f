# sd3-coreml: SD3 checkpoints -> the Core ML resource folders of the MobileDiffuser app.
# `snakemake coremlsd3_4step_packages` builds anywhere; `snakemake coremlsd3_4step` needs
# Apple's compiler (a Mac). See README.md.
#
# Results, under config `output_root` (each pattern spelled once, in pipeline/artifacts.py):
#   mmdit/<model>/<target>/conditioning.<setting>.mlpackage     Conditioning
#   mmdit/<model>/<target>/latent<H>x<W>/input.<setting>...     Stage0
#   mmdit/<model>/<target>/latent<H>x<W>/blocks<a>-<b>[_head][.split_heads]... a block range, shared by layouts
#   text_encoders/<target>/TextEncoder{,2}.<setting>...         vae/<target>/latent<H>x<W>/VAEDecoder.fp16...
#   tokenizer/   compiled/ios<deployment target>/<package path>.mlmodelc (macOS)
#   fidelity/<package path>.json (per-package figures)   device/ (Core ML profiles, macOS)
#   coremlsd3_<model>_packages/, coremlsd3_<model>/ (the folders)   reports/<folder>/ (their reports)
#   calibration/<model>/<calibration>/, sensitivity/<model>/<calibration>/<piece>.per_tensor.json,
#   recipes/<model>/recipe-<budget>{,.report}.json   a recipe made from a budget (rules/sensitivity.smk)
#   calibration/text_encoders/p<hex>/, sensitivity/text_encoders/p<hex>/<encoder>.per_tensor.json,
#   recipes/text_encoders/recipe-<budget>/{TextEncoder,TextEncoder2,report}.json   the text encoders' twins
#   logs/ and benchmarks/ by job: <piece>, compress/<piece>.<setting>, fidelity/<piece>.<setting>, ...
# <setting> is a compression setting's slug (fp16, int8_linear_symmetric_per_channel, recipe-bpw4.5, ...).

from snakemake.utils import min_version

min_version("9.0")


# The real build's config, unless one is given (`--configfile config/demo.yaml`); merging
# the two would leave keys of the real build in the demo.
if not config:

    configfile: "config/config.yaml"


# The Mac hand-off (config/handoff.yaml): packages folders built elsewhere, compiled into the
# app's folders; nothing else is planned, no model or checkpoint is read.
include: "rules/shared.smk"


if "handoff" in config:

    include: "rules/handoff.smk"

else:

    include: "rules/common.smk"


    report: "report/workflow.rst"


    # Artifact paths name their content; these keep each wildcard to what it names.
    wildcard_constraints:
        model="|".join(MODELS),
        target="iOS\d+",
        height="\d+",
        width="\d+",
        start="\d+",
        end="\d+",
        head="(_head)?",
        attention=ATTENTION_WILDCARD,
        encoder="TextEncoder2?",
        compression=SLUG_PATTERN,
        precision=f"fp16|{SLUG_PATTERN}",
        calibration=CALIBRATION_WILDCARD,
        piece=ANALYSIS_PIECE_WILDCARD,


    include: "rules/checkpoints.smk"
    include: "rules/downloads.smk"
    include: "rules/normalize.smk"
    include: "rules/mmdit.smk"
    include: "rules/compress.smk"
    include: "rules/sensitivity.smk"
    include: "rules/text_encoders.smk"
    include: "rules/vae.smk"
    include: "rules/tokenizer.smk"
    include: "rules/fidelity.smk"
    include: "rules/attention.smk"
    include: "rules/end_to_end.smk"
    include: "rules/compile.smk"
    include: "rules/folders.smk"
    include: "rules/sweep.smk"
    include: "rules/cleanup.smk"


    onstart:
        check_host_before_jobs()


    rule all:
        default_target: True
        input:
            [ART.sums(model, "packages") for model in MODELS],


    # Per-package fidelity (also part of every packages folder), and Core ML's on a Mac.
    rule fidelity:
        input:
            [ART.report(model, name) for model in MODELS for name in ["fidelity.json", *COREML_FIDELITY]],


    localrules:
        verify,
        verify_folders,


    # Fidelity, the end-to-end check (on a Mac Core ML's too), then every packages folder (and each
    # app folder already built) against its SHA256SUMS and manifest.json. Rules without outputs run
    # whenever asked for.
    rule verify:
        input:
            [ART.report(model, name) for model in MODELS for name in ("fidelity.json", "end_to_end.json")],
            [ART.report(model, name) for model in MODELS for name in [*COREML_FIDELITY, *COREML_END_TO_END]],
            [ART.sums(model, "packages") for model in MODELS],
        params:
            folders=lambda wildcards: get_built_folders(include_packages=True),
        log:
            ART.log("verify"),
        conda:
            "envs/convert.yaml"
        shell:
            "python -m sd3coreml verify-folder {params.folders:q} 2>&1 | tee {log}"


    # Only the folder check, over the configured folders as they are on disk; builds nothing.
    rule verify_folders:
        params:
            folders=lambda wildcards: get_built_folders(),
        log:
            ART.log("verify_folders"),
        conda:
            "envs/convert.yaml"
        shell:
            "python -m sd3coreml verify-folder {params.folders:q} 2>&1 | tee {log}"


    for model in MODELS:

        for kind in ("packages", "app"):

            rule:
                name:
                    folder_name(model, kind)
                input:
                    ART.sums(model, kind),
