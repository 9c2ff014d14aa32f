# A transformer given in the original SD3 layout (joint_blocks.*, e.g. Stability's single-file
# sd3_medium.safetensors) is converted once to a bare diffusers-format file, which every
# MMDiT job then reads like any other (see transformer_inputs in common.smk).


rule normalize_transformer:
    input:
        unpack(original_transformer_inputs),
    output:
        f"{ROOT}/checkpoints/normalized/{{model}}.safetensors",
    params:
        config=transformer_config,
        config_sha256=transformer_config_sha256,
        code=step_code("normalize-transformer"),
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        f"{ROOT}/logs/normalize/{{model}}.log",
    benchmark:
        f"{ROOT}/benchmarks/normalize/{{model}}.tsv"
    resources:
        mem_mb=normalize_mem_mb,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml normalize-transformer --weights {input.original} --config {params.config}"
        " --out {output} > {log} 2>&1"
