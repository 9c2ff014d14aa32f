# Synthetic inputs: a distilled transformer and SD3 components made from a seed, no download.


rule synthetic_transformer:
    output:
        weights=f"{ROOT}/checkpoints/{{preset}}-seed{{seed}}.safetensors",
        config=f"{ROOT}/checkpoints/{{preset}}-seed{{seed}}.json",
    params:
        toolchain=TOOLCHAIN_FINGERPRINT,
    input:
        code=library("synthetic"),
    log:
        f"{ROOT}/logs/synthetic_transformer/{{preset}}-seed{{seed}}.log",
    benchmark:
        f"{ROOT}/benchmarks/synthetic_transformer/{{preset}}-seed{{seed}}.tsv"
    resources:
        mem_mb=6000,
    wildcard_constraints:
        preset="tiny|sd3-medium",
        seed="\d+",
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml synthetic-transformer --preset {wildcards.preset} --seed {wildcards.seed}"
        " --weights {output.weights} --config {output.config} > {log} 2>&1"


rule synthetic_components:
    output:
        directory(f"{ROOT}/checkpoints/{{preset}}-components-seed{{seed}}"),
    params:
        toolchain=TOOLCHAIN_FINGERPRINT,
    input:
        code=library("synthetic", "synthetic_tokenizer"),
    log:
        f"{ROOT}/logs/synthetic_components/{{preset}}-seed{{seed}}.log",
    benchmark:
        f"{ROOT}/benchmarks/synthetic_components/{{preset}}-seed{{seed}}.tsv"
    resources:
        mem_mb=6000,
    wildcard_constraints:
        preset="tiny|sd3-medium",
        seed="\d+",
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml synthetic-components --preset {wildcards.preset} --seed {wildcards.seed}"
        " --out {output} > {log} 2>&1"
