# Fidelity: each package (fp16 and its compressed twin) run on seeded inputs by the MIL
# executor (and, on a Mac, by Core ML) and compared with the PyTorch module it came from; the
# report judges the figures against config `fidelity.min_psnr_db`. A packages folder is
# assembled only from a build whose report passed. The measurement path mirrors the
# package's, so a layout or compression change re-measures only the packages that changed.


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
        runner=COREML,
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.job_log("fidelity", path=PIECES["block_range"]),
    benchmark:
        ART.job_benchmark("fidelity", path=PIECES["block_range"])
    resources:
        mem_mb=4000,
        neural_engine=NEURAL_ENGINE_JOBS,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml verify-package --kind {params.kind} --weights {input.weights} --config {params.config}"
        " {params.piece} --packages {input.packages} --seed {params.seed} --out {output}"
        " --coreml-compute-units {params.runner[units]} > {log} 2>&1"


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
        neural_engine=NEURAL_ENGINE_JOBS,


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
        neural_engine=NEURAL_ENGINE_JOBS,


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
        runner=COREML,
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.job_log("fidelity", path=PIECES["text_encoder"]),
    benchmark:
        ART.job_benchmark("fidelity", path=PIECES["text_encoder"])
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
        packages=verified_packages_of("vae_decoder"),
    output:
        ART.measurement_pattern("vae_decoder"),
    params:
        code=step_code("verify-package"),
        seed=VERIFY_SEED,
        runner=COREML,
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.job_log("fidelity", path=PIECES["vae_decoder"]),
    benchmark:
        ART.job_benchmark("fidelity", path=PIECES["vae_decoder"])
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
