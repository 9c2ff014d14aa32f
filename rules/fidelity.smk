# Fidelity: each package (fp16 and its compressed twin) run on seeded inputs by the MIL
# executor and compared with the PyTorch module it came from; the report judges the
# figures against config `fidelity.min_psnr_db`. A packages folder is assembled only from a
# build whose report passed. The measurement path mirrors the compressed package's, so a layout
# or compression change re-measures only the packages that changed.

VERIFY_SEED = config["fidelity"]["seed"]
# Who measures: a Mac adds Core ML's own figures (on the config's compute units), so
# measurements copied from Linux are measured again there.
COREML_UNITS = config["fidelity"]["coreml_compute_units"]
RUNNER = {"runner": "executor+coreml" if ON_MACOS else "executor", "units": COREML_UNITS}


rule verify_mmdit_conditioning:
    input:
        unpack(transformer_inputs),
        packages=verified_packages(f"{ROOT}/mmdit/{{model}}/{{target}}/conditioning"),
    output:
        f"{ROOT}/fidelity/mmdit/{{model}}/{{target}}/conditioning.{{precision}}.json",
    params:
        config=transformer_config,
        config_sha256=transformer_config_sha256,
        code=step_code("verify-package"),
        seed=VERIFY_SEED,
        runner=RUNNER,
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        f"{ROOT}/logs/fidelity/mmdit/{{model}}/{{target}}/conditioning.{{precision}}.log",
    benchmark:
        f"{ROOT}/benchmarks/fidelity/mmdit/{{model}}/{{target}}/conditioning.{{precision}}.tsv"
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
        unpack(transformer_inputs),
        packages=verified_packages(f"{ROOT}/mmdit/{{model}}/{{target}}/latent{{height}}x{{width}}/input"),
    output:
        f"{ROOT}/fidelity/mmdit/{{model}}/{{target}}/latent{{height}}x{{width}}/input.{{precision}}.json",
    params:
        config=transformer_config,
        config_sha256=transformer_config_sha256,
        code=step_code("verify-package"),
        seed=VERIFY_SEED,
        runner=RUNNER,
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        f"{ROOT}/logs/fidelity/mmdit/{{model}}/{{target}}/latent{{height}}x{{width}}/input.{{precision}}.log",
    benchmark:
        f"{ROOT}/benchmarks/fidelity/mmdit/{{model}}/{{target}}/latent{{height}}x{{width}}/input.{{precision}}.tsv"
    resources:
        mem_mb=2000,
        neural_engine=NEURAL_ENGINE_JOBS,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml verify-package --kind input-stage --weights {input.weights} --config {params.config}"
        " --latent {wildcards.height} {wildcards.width} --packages {input.packages} --seed {params.seed}"
        " --out {output} --coreml-compute-units {params.runner[units]} > {log} 2>&1"


rule verify_mmdit_block_range:
    input:
        unpack(transformer_inputs),
        packages=verified_packages(
            f"{ROOT}/mmdit/{{model}}/{{target}}/latent{{height}}x{{width}}/blocks{{start}}-{{end}}{{head}}"
        ),
    output:
        f"{ROOT}/fidelity/mmdit/{{model}}/{{target}}/latent{{height}}x{{width}}/blocks{{start}}-{{end}}{{head}}.{{precision}}.json",
    params:
        config=transformer_config,
        config_sha256=transformer_config_sha256,
        code=step_code("verify-package"),
        seed=VERIFY_SEED,
        runner=RUNNER,
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        f"{ROOT}/logs/fidelity/mmdit/{{model}}/{{target}}/latent{{height}}x{{width}}/blocks{{start}}-{{end}}{{head}}.{{precision}}.log",
    benchmark:
        f"{ROOT}/benchmarks/fidelity/mmdit/{{model}}/{{target}}/latent{{height}}x{{width}}/blocks{{start}}-{{end}}{{head}}.{{precision}}.tsv"
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
        packages=verified_packages(f"{ROOT}/text_encoders/{{target}}/{{encoder}}"),
    output:
        f"{ROOT}/fidelity/text_encoders/{{target}}/{{encoder}}.{{precision}}.json",
    params:
        code=step_code("verify-package"),
        folder=text_encoder_folder,
        seed=VERIFY_SEED,
        runner=RUNNER,
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        f"{ROOT}/logs/fidelity/text_encoders/{{target}}/{{encoder}}.{{precision}}.log",
    benchmark:
        f"{ROOT}/benchmarks/fidelity/text_encoders/{{target}}/{{encoder}}.{{precision}}.tsv"
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
        packages=verified_packages(f"{ROOT}/vae/{{target}}/latent{{height}}x{{width}}/VAEDecoder"),
    output:
        f"{ROOT}/fidelity/vae/{{target}}/latent{{height}}x{{width}}/VAEDecoder.{{precision}}.json",
    params:
        code=step_code("verify-package"),
        seed=VERIFY_SEED,
        runner=RUNNER,
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        f"{ROOT}/logs/fidelity/vae/{{target}}/latent{{height}}x{{width}}/VAEDecoder.{{precision}}.log",
    benchmark:
        f"{ROOT}/benchmarks/fidelity/vae/{{target}}/latent{{height}}x{{width}}/VAEDecoder.{{precision}}.tsv"
    resources:
        mem_mb=8000,
        neural_engine=NEURAL_ENGINE_JOBS,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml verify-package --kind vae-decoder --source {input.components}/vae"
        " --latent {wildcards.height} {wildcards.width} --packages {input.packages} --seed {params.seed}"
        " --out {output} --coreml-compute-units {params.runner[units]} > {log} 2>&1"


rule fidelity_report:
    input:
        measurements=lambda wildcards: fidelity_measurements(wildcards.model).values(),
    output:
        json=f"{ROOT}/reports/coremlsd3_{{model}}_packages/fidelity.json",
        table=report(
            f"{ROOT}/reports/coremlsd3_{{model}}_packages/fidelity.md",
            caption="../report/fidelity.rst",
            category="Fidelity",
            labels={"folder": "coremlsd3_{model}_packages"},
        ),
    params:
        code=step_code("fidelity-report"),
        measurements=fidelity_report_args,
        thresholds=json.dumps(config["fidelity"]["min_psnr_db"], sort_keys=True),
        coreml=coreml_policy_args,
    log:
        f"{ROOT}/logs/fidelity/coremlsd3_{{model}}_packages.log",
    localrule: True
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml fidelity-report {params.measurements} --thresholds {params.thresholds:q}"
        " --out-json {output.json} --out-md {output.table} {params.coreml} > {log} 2>&1"
