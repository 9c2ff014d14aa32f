# CLIP's BPE files, checked and copied from the components folder.


rule tokenizer_files:
    input:
        components=config["components"],
        code=library("tokenizer", "atomic"),
    output:
        vocab=tokenizer_files()["vocab.json"],
        merges=tokenizer_files()["merges.txt"],
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
