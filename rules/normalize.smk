# A transformer given in the original SD3 layout (joint_blocks.*, e.g. Stability's single-file
# sd3_medium.safetensors) is converted once to a bare diffusers-format file, which every
# MMDiT job then reads like any other (see get_transformer_weights in common.smk).


rule normalize_transformer:
    input:
        original=get_original_weights,
    output:
        ART.normalized_transformer("{model}"),
    params:
        config=get_transformer_config,
        config_sha256=get_transformer_config_sha256,
        code=step_code("normalize-transformer"),
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.log("normalize/{model}"),
    benchmark:
        ART.benchmark("normalize/{model}")
    resources:
        mem_mb=get_normalize_mem_mb,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml normalize-transformer --weights {input.original} --config {params.config}"
        " --out {output} > {log} 2>&1"
