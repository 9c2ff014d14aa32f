# End to end: a prompt through a packages folder as the app runs it, against stock diffusers
# (StableDiffusion3Pipeline without T5, AutoencoderKL.decode). At full scale this is the slow
# part of `verify`: the reference runs the whole transformer in fp32 (SD3 Medium size: 13 min,
# 16.7 GiB peak on 2 cores).


rule end_to_end:
    input:
        unpack(transformer_inputs),
        folder=f"{ROOT}/coremlsd3_{{model}}_packages/SHA256SUMS",
        components=config["components"],
    output:
        json=f"{ROOT}/reports/coremlsd3_{{model}}_packages/end_to_end.json",
        png=report(
            f"{ROOT}/reports/coremlsd3_{{model}}_packages/end_to_end.png",
            caption="../report/end_to_end.rst",
            category="Samples",
            labels={"folder": "coremlsd3_{model}_packages"},
        ),
    params:
        config=transformer_config,
        config_sha256=transformer_config_sha256,
        code=step_code("end-to-end"),
        steps=sampler_steps,
        seed=VERIFY_SEED,
        min_psnr_db=end_to_end_bar,
        prompt=config["fidelity"]["prompt"],
        runner=RUNNER,
        coreml=coreml_policy_args,
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        f"{ROOT}/logs/end_to_end/coremlsd3_{{model}}_packages.log",
    benchmark:
        f"{ROOT}/benchmarks/end_to_end/coremlsd3_{{model}}_packages.tsv"
    resources:
        mem_mb=end_to_end_mem_mb,
        neural_engine=NEURAL_ENGINE_JOBS,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml end-to-end --folder $(dirname {input.folder}) --weights {input.weights}"
        " --config {params.config} --components {input.components} --steps {params.steps} --seed {params.seed}"
        " --min-psnr-db {params.min_psnr_db} --prompt {params.prompt:q} --out-json {output.json}"
        " --out-png {output.png} {params.coreml} --coreml-compute-units {params.runner[units]} > {log} 2>&1"
