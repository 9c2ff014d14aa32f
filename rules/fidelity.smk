# Fidelity: each package (fp16 and its compressed twin) run on seeded inputs by the MIL
# executor and compared with the PyTorch module it came from; the report judges the figures
# against config `fidelity.min_psnr_db`. A packages folder is assembled only from a build whose
# report passed. The measurement path mirrors the package's, so a layout or compression change
# re-measures only the packages that changed.
#
# On a Mac (ON_MACOS) Core ML measures the same packages too: the fidelity_coreml_* rules, each
# writing coreml/<package path>.json beside the executor's fidelity/<package path>.json, under
# config `fidelity.coreml_compute_units`, and fidelity_report_coreml judges both side by side
# (reports/<folder>/fidelity_coreml.md). They are planned only there (`fidelity`, `verify`; a
# folder needs that report passed only with `fidelity.enforce_coreml`), so a Mac over Linux-built
# results adds Core ML's figures without re-measuring or re-judging the executor's.


rule verify_mmdit_block_range:
    input:
        weights=get_transformer_weights,
        packages=verified_packages_of("block_range"),
    output:
        ART.measurement_pattern("block_range"),
    params:
        kind="block-range",
        piece=get_piece_args,
        config=get_transformer_config,
        config_sha256=get_transformer_config_sha256,
        code=step_code("verify-package"),
        seed=VERIFY_SEED,
        runner=EXECUTOR_RUNNER,
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.job_log("fidelity", path=PIECES["block_range"]),
    benchmark:
        ART.job_benchmark("fidelity", path=PIECES["block_range"])
    resources:
        mem_mb=4000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml verify-package --kind {params.kind} --weights {input.weights} --config {params.config}"
        " {params.piece} --packages {input.packages} --seed {params.seed} --out {output}"
        " --runner {params.runner} > {log} 2>&1"


use rule verify_mmdit_block_range as verify_mmdit_input_stage with:
    input:
        weights=get_transformer_weights,
        packages=verified_packages_of("input_stage"),
    output:
        ART.measurement_pattern("input_stage"),
    params:
        kind="input-stage",
    log:
        ART.job_log("fidelity", path=PIECES["input_stage"]),
    benchmark:
        ART.job_benchmark("fidelity", path=PIECES["input_stage"])
    resources:
        mem_mb=2000,


use rule verify_mmdit_block_range as verify_mmdit_conditioning with:
    input:
        weights=get_transformer_weights,
        packages=verified_packages_of("conditioning"),
    output:
        ART.measurement_pattern("conditioning"),
    params:
        kind="conditioning",
    log:
        ART.job_log("fidelity", path=PIECES["conditioning"]),
    benchmark:
        ART.job_benchmark("fidelity", path=PIECES["conditioning"])
    resources:
        mem_mb=2000,


rule verify_text_encoder:
    input:
        components=config["components"],
        packages=verified_packages_of("text_encoder"),
    output:
        ART.measurement_pattern("text_encoder"),
    params:
        folder=lambda wildcards: TEXT_ENCODERS[wildcards.encoder],
        code=step_code("verify-package"),
        seed=VERIFY_SEED,
        runner=EXECUTOR_RUNNER,
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.job_log("fidelity", path=PIECES["text_encoder"]),
    benchmark:
        ART.job_benchmark("fidelity", path=PIECES["text_encoder"])
    resources:
        mem_mb=8000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml verify-package --kind text-encoder --source {input.components}/{params.folder}"
        " --packages {input.packages} --seed {params.seed} --out {output}"
        " --runner {params.runner} > {log} 2>&1"


rule verify_vae_decoder:
    input:
        components=config["components"],
        packages=verified_packages_of("vae_decoder"),
    output:
        ART.measurement_pattern("vae_decoder"),
    params:
        code=step_code("verify-package"),
        seed=VERIFY_SEED,
        runner=EXECUTOR_RUNNER,
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.job_log("fidelity", path=PIECES["vae_decoder"]),
    benchmark:
        ART.job_benchmark("fidelity", path=PIECES["vae_decoder"])
    resources:
        mem_mb=8000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml verify-package --kind vae-decoder --source {input.components}/vae"
        " --latent {wildcards.height} {wildcards.width}"
        " --packages {input.packages} --seed {params.seed} --out {output}"
        " --runner {params.runner} > {log} 2>&1"


# Core ML's own measurements (macOS): the same checks, Core ML predicting, one job on the
# Neural Engine at a time.


use rule verify_mmdit_block_range as fidelity_coreml_block_range with:
    output:
        ART.coreml_measurement_pattern("block_range"),
    params:
        runner=COREML_RUNNER,
    log:
        ART.job_log("fidelity_coreml", path=PIECES["block_range"]),
    benchmark:
        ART.job_benchmark("fidelity_coreml", path=PIECES["block_range"])
    resources:
        mem_mb=4000,
        neural_engine=1,


use rule verify_mmdit_input_stage as fidelity_coreml_input_stage with:
    output:
        ART.coreml_measurement_pattern("input_stage"),
    params:
        runner=COREML_RUNNER,
    log:
        ART.job_log("fidelity_coreml", path=PIECES["input_stage"]),
    benchmark:
        ART.job_benchmark("fidelity_coreml", path=PIECES["input_stage"])
    resources:
        mem_mb=2000,
        neural_engine=1,


use rule verify_mmdit_conditioning as fidelity_coreml_conditioning with:
    output:
        ART.coreml_measurement_pattern("conditioning"),
    params:
        runner=COREML_RUNNER,
    log:
        ART.job_log("fidelity_coreml", path=PIECES["conditioning"]),
    benchmark:
        ART.job_benchmark("fidelity_coreml", path=PIECES["conditioning"])
    resources:
        mem_mb=2000,
        neural_engine=1,


use rule verify_text_encoder as fidelity_coreml_text_encoder with:
    output:
        ART.coreml_measurement_pattern("text_encoder"),
    params:
        runner=COREML_RUNNER,
    log:
        ART.job_log("fidelity_coreml", path=PIECES["text_encoder"]),
    benchmark:
        ART.job_benchmark("fidelity_coreml", path=PIECES["text_encoder"])
    resources:
        mem_mb=8000,
        neural_engine=1,


use rule verify_vae_decoder as fidelity_coreml_vae_decoder with:
    output:
        ART.coreml_measurement_pattern("vae_decoder"),
    params:
        runner=COREML_RUNNER,
    log:
        ART.job_log("fidelity_coreml", path=PIECES["vae_decoder"]),
    benchmark:
        ART.job_benchmark("fidelity_coreml", path=PIECES["vae_decoder"])
    resources:
        mem_mb=8000,
        neural_engine=1,


rule fidelity_report:
    input:
        unpack(get_fidelity_measurements),
    output:
        json=ART.report("{model}", "fidelity.json"),
        table=report(
            ART.report("{model}", "fidelity.md"),
            caption="../report/fidelity.rst",
            category="Fidelity",
            labels={"folder": folder_name("{model}", "packages")},
        ),
    params:
        code=step_code("fidelity-report"),
        spec=get_fidelity_report_spec,
    log:
        ART.log(f"fidelity/{folder_name('{model}', 'packages')}"),
    localrule: True
    conda:
        "../envs/convert.yaml"
    shell:
        "echo {params.spec:q} | python -m sd3coreml fidelity-report --spec -"
        " --out-json {output.json} --out-md {output.table} > {log} 2>&1"


use rule fidelity_report as fidelity_report_coreml with:
    input:
        unpack(get_coreml_report_inputs),
    output:
        json=ART.report("{model}", "fidelity_coreml.json"),
        table=report(
            ART.report("{model}", "fidelity_coreml.md"),
            caption="../report/fidelity.rst",
            category="Fidelity",
            labels={"folder": folder_name("{model}", "packages") + " (Core ML)"},
        ),
    params:
        spec=get_coreml_report_spec,
    log:
        ART.log(f"fidelity_coreml/{folder_name('{model}', 'packages')}"),
