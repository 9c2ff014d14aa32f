# CLIP-L (TextEncoder) and OpenCLIP bigG (TextEncoder2), fp16; shared by every model.

rule text_encoder:
    input:
        components=config["components"],
    output:
        directory(f"{ROOT}/text_encoders/{{target}}/{{encoder}}.fp16.mlpackage"),
    params:
        code=step_code("convert-text-encoder"),
        folder=text_encoder_folder,
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        f"{ROOT}/logs/text_encoders/{{target}}/{{encoder}}.log",
    benchmark:
        f"{ROOT}/benchmarks/text_encoders/{{target}}/{{encoder}}.tsv"
    resources:
        mem_mb=6000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml convert-text-encoder --encoder {input.components}/{params.folder}"
        " --target {wildcards.target} --out {output} > {log} 2>&1"
