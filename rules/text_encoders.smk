# CLIP-L (TextEncoder) and OpenCLIP bigG (TextEncoder2), fp16; shared by every model.


rule text_encoder:
    input:
        components=config["components"],
    output:
        directory(ART.piece("text_encoder", "fp16")),
    params:
        code=step_code("convert-text-encoder"),
        folder=lambda wildcards: TEXT_ENCODERS[wildcards.encoder],
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.job_log("convert", path=PIECES["text_encoder"]),
    benchmark:
        ART.job_benchmark("convert", path=PIECES["text_encoder"])
    resources:
        mem_mb=6000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml convert-text-encoder --encoder {input.components}/{params.folder}"
        " --target {wildcards.target} --out {output} > {log} 2>&1"
