# CLIP's BPE files, checked and copied from the components folder.


rule tokenizer_files:
    input:
        components=config["components"],
    output:
        vocab=tokenizer_files()["vocab.json"],
        merges=tokenizer_files()["merges.txt"],
    params:
        code=step_code("copy-tokenizer"),
    log:
        f"{ROOT}/logs/tokenizer.log",
    benchmark:
        f"{ROOT}/benchmarks/tokenizer.tsv"
    resources:
        mem_mb=200,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml copy-tokenizer --tokenizer {input.components}/tokenizer"
        " --out-dir $(dirname {output.vocab}) > {log} 2>&1"
