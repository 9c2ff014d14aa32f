# CLIP's BPE files, checked and copied from the components folder.


rule tokenizer_files:
    input:
        components=config["components"],
    output:
        list(ART.tokenizer_files().values()),
    params:
        code=step_code("copy-tokenizer"),
    log:
        ART.log("tokenizer"),
    benchmark:
        ART.benchmark("tokenizer")
    resources:
        mem_mb=200,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml copy-tokenizer --tokenizer {input.components}/tokenizer"
        " --out-dir $(dirname {output[0]}) > {log} 2>&1"
