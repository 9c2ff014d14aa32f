# The MMDiT in the app's pieces, fp16: block ranges, Stage0 (input) and Conditioning.
# A block range's path names its content (model, target, latent, blocks, head, and its
# attention where not joint), so layouts that share a range share the package. One step per
# piece; the piece's own arguments (block range, latent size, attention) come from its path's
# wildcards.


rule mmdit_block_range:
    input:
        weights=get_transformer_weights,
    output:
        directory(ART.piece("block_range", "fp16")),
    params:
        step="convert-block-range",
        code=step_code("convert-block-range"),
        piece=get_piece_args,
        attention=get_attention_args,
        config=get_transformer_config,
        config_sha256=get_transformer_config_sha256,
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.job_log("convert", path=PIECES["block_range"]),
    benchmark:
        ART.job_benchmark("convert", path=PIECES["block_range"])
    resources:
        mem_mb=4000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml {params.step} --weights {input.weights} --config {params.config} {params.piece}"
        " {params.attention} --target {wildcards.target} --out {output} > {log} 2>&1"


use rule mmdit_block_range as mmdit_input_stage with:
    output:
        directory(ART.piece("input_stage", "fp16")),
    params:
        step="convert-input-stage",
        code=step_code("convert-input-stage"),
    log:
        ART.job_log("convert", path=PIECES["input_stage"]),
    benchmark:
        ART.job_benchmark("convert", path=PIECES["input_stage"])
    resources:
        mem_mb=2000,


use rule mmdit_block_range as mmdit_conditioning with:
    output:
        directory(ART.piece("conditioning", "fp16")),
    params:
        step="convert-conditioning",
        code=step_code("convert-conditioning"),
    log:
        ART.job_log("convert", path=PIECES["conditioning"]),
    benchmark:
        ART.job_benchmark("convert", path=PIECES["conditioning"])
    resources:
        mem_mb=2000,
