# The MMDiT in the app's pieces, fp16: Conditioning, Stage0 (input), and block ranges.
# A block range's path names its content (model, target, latent, blocks, head), so layouts
# that share a range share the package.


rule mmdit_conditioning:
    input:
        weights=get_transformer_weights,
    output:
        directory(ART.piece("conditioning", "fp16")),
    params:
        config=get_transformer_config,
        config_sha256=get_transformer_config_sha256,
        code=step_code("convert-conditioning"),
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.log(PIECES["conditioning"]),
    benchmark:
        ART.benchmark(PIECES["conditioning"])
    resources:
        mem_mb=2000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml convert-conditioning --weights {input.weights} --config {params.config}"
        " --target {wildcards.target} --out {output} > {log} 2>&1"


rule mmdit_input_stage:
    input:
        weights=get_transformer_weights,
    output:
        directory(ART.piece("input_stage", "fp16")),
    params:
        config=get_transformer_config,
        config_sha256=get_transformer_config_sha256,
        code=step_code("convert-input-stage"),
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.log(PIECES["input_stage"]),
    benchmark:
        ART.benchmark(PIECES["input_stage"])
    resources:
        mem_mb=2000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml convert-input-stage --weights {input.weights} --config {params.config}"
        " --latent {wildcards.height} {wildcards.width} --target {wildcards.target} --out {output} > {log} 2>&1"


rule mmdit_block_range:
    input:
        weights=get_transformer_weights,
    output:
        directory(ART.piece("block_range", "fp16")),
    params:
        config=get_transformer_config,
        config_sha256=get_transformer_config_sha256,
        code=step_code("convert-block-range"),
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.log(PIECES["block_range"]),
    benchmark:
        ART.benchmark(PIECES["block_range"])
    resources:
        mem_mb=4000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml convert-block-range --weights {input.weights} --config {params.config}"
        " --start {wildcards.start} --end {wildcards.end} --latent {wildcards.height} {wildcards.width}"
        " --target {wildcards.target} --out {output} > {log} 2>&1"
