# Fidelity: each package (fp16 and its compressed twin) run on seeded inputs by the MIL
# executor (and, on a Mac, by Core ML) and compared with the PyTorch module it came from; the
# report judges the figures against config `fidelity.min_psnr_db`. A packages folder is
# assembled only from a build whose report passed. The measurement path mirrors the
# package's, so a layout or compression change re-measures only the packages that changed.


rule verify_mmdit_conditioning:
    input:
        weights=get_transformer_weights,
        packages=get_verified_packages("conditioning"),
    output:
        ART.measurement_pattern("conditioning"),
    params:
        config=get_transformer_config,
        config_sha256=get_transformer_config_sha256,
        code=step_code("verify-package"),
        seed=VERIFY_SEED,
        runner=COREML,
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.log(f"fidelity/{PIECES['conditioning']}.{{precision}}"),
    benchmark:
        ART.benchmark(f"fidelity/{PIECES['conditioning']}.{{precision}}")
    resources:
        mem_mb=2000,
        neural_engine=NEURAL_ENGINE_JOBS,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml verify-package --kind conditioning --weights {input.weights} --config {params.config}"
        " --packages {input.packages} --seed {params.seed} --out {output}"
        " --coreml-compute-units {params.runner[units]} > {log} 2>&1"


rule verify_mmdit_input_stage:
    input:
        weights=get_transformer_weights,
        packages=get_verified_packages("input_stage"),
    output:
        ART.measurement_pattern("input_stage"),
    params:
        config=get_transformer_config,
        config_sha256=get_transformer_config_sha256,
        code=step_code("verify-package"),
        seed=VERIFY_SEED,
        runner=COREML,
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.log(f"fidelity/{PIECES['input_stage']}.{{precision}}"),
    benchmark:
        ART.benchmark(f"fidelity/{PIECES['input_stage']}.{{precision}}")
    resources:
        mem_mb=2000,
        neural_engine=NEURAL_ENGINE_JOBS,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml verify-package --kind input-stage --weights {input.weights} --config {params.config}"
        " --latent {wildcards.height} {wildcards.width}"
        " --packages {input.packages} --seed {params.seed} --out {output}"
        " --coreml-compute-units {params.runner[units]} > {log} 2>&1"


rule verify_mmdit_block_range:
    input:
        weights=get_transformer_weights,
        packages=get_verified_packages("block_range"),
    output:
        ART.measurement_pattern("block_range"),
    params:
        config=get_transformer_config,
        config_sha256=get_transformer_config_sha256,
        code=step_code("verify-package"),
        seed=VERIFY_SEED,
        runner=COREML,
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.log(f"fidelity/{PIECES['block_range']}.{{precision}}"),
    benchmark:
        ART.benchmark(f"fidelity/{PIECES['block_range']}.{{precision}}")
    resources:
        mem_mb=4000,
        neural_engine=NEURAL_ENGINE_JOBS,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml verify-package --kind block-range --weights {input.weights} --config {params.config}"
        " --start {wildcards.start} --end {wildcards.end} --latent {wildcards.height} {wildcards.width}"
        " --packages {input.packages} --seed {params.seed} --out {output}"
        " --coreml-compute-units {params.runner[units]} > {log} 2>&1"


rule verify_text_encoder:
    input:
        components=config["components"],
        packages=get_verified_packages("text_encoder"),
    output:
        ART.measurement_pattern("text_encoder"),
    params:
        folder=lambda wildcards: TEXT_ENCODERS[wildcards.encoder],
        code=step_code("verify-package"),
        seed=VERIFY_SEED,
        runner=COREML,
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.log(f"fidelity/{PIECES['text_encoder']}.{{precision}}"),
    benchmark:
        ART.benchmark(f"fidelity/{PIECES['text_encoder']}.{{precision}}")
    resources:
        mem_mb=8000,
        neural_engine=NEURAL_ENGINE_JOBS,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml verify-package --kind text-encoder --source {input.components}/{params.folder}"
        " --packages {input.packages} --seed {params.seed} --out {output}"
        " --coreml-compute-units {params.runner[units]} > {log} 2>&1"


rule verify_vae_decoder:
    input:
        components=config["components"],
        packages=get_verified_packages("vae_decoder"),
    output:
        ART.measurement_pattern("vae_decoder"),
    params:
        code=step_code("verify-package"),
        seed=VERIFY_SEED,
        runner=COREML,
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.log(f"fidelity/{PIECES['vae_decoder']}.{{precision}}"),
    benchmark:
        ART.benchmark(f"fidelity/{PIECES['vae_decoder']}.{{precision}}")
    resources:
        mem_mb=8000,
        neural_engine=NEURAL_ENGINE_JOBS,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml verify-package --kind vae-decoder --source {input.components}/vae"
        " --latent {wildcards.height} {wildcards.width}"
        " --packages {input.packages} --seed {params.seed} --out {output}"
        " --coreml-compute-units {params.runner[units]} > {log} 2>&1"


rule fidelity_report:
    input:
        unpack(get_fidelity_measurements),
    output:
        json=ART.report("{model}", "fidelity.json"),
        table=report(
            ART.report("{model}", "fidelity.md"),
            caption="../report/fidelity.rst",
            category="Fidelity",
            labels={"folder": "coremlsd3_{model}_packages"},
        ),
    params:
        code=step_code("fidelity-report"),
        measurements=get_fidelity_report_args,
        thresholds=json.dumps(config["fidelity"]["min_psnr_db"], sort_keys=True),
        coreml=get_coreml_policy_args,
    log:
        ART.log(f"fidelity/{folder_name('{model}', 'packages')}"),
    localrule: True
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml fidelity-report {params.measurements} --thresholds {params.thresholds:q}"
        " --out-json {output.json} --out-md {output.table} {params.coreml} > {log} 2>&1"
