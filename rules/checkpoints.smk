# Synthetic inputs: a distilled transformer and SD3 components made from a seed, no download.


# `tiny-heavy-tailed-seed2.safetensors`: heavy-tailed matrices with outlier channels, to test
# quantization on weights shaped like trained ones.
rule synthetic_transformer:
    output:
        weights=ART.synthetic("transformer", ".safetensors"),
        config=ART.synthetic("transformer", ".json"),
    params:
        code=step_code("synthetic-transformer"),
        distribution=lambda wildcards: "heavy-tailed" if wildcards.heavy else "normal",
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.log("synthetic_transformer/{preset}{heavy}-seed{seed}"),
    benchmark:
        ART.benchmark("synthetic_transformer/{preset}{heavy}-seed{seed}")
    resources:
        mem_mb=get_synthetic_transformer_mem_mb,
    wildcard_constraints:
        preset=PRESET_PATTERN,
        heavy="(-heavy-tailed)?",
        seed="\d+",
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml synthetic-transformer --preset {wildcards.preset} --seed {wildcards.seed}"
        " --distribution {params.distribution} --weights {output.weights} --config {output.config} > {log} 2>&1"


rule synthetic_components:
    output:
        directory(ART.synthetic("components")),
    params:
        code=step_code("synthetic-components"),
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.log("synthetic_components/{preset}-seed{seed}"),
    benchmark:
        ART.benchmark("synthetic_components/{preset}-seed{seed}")
    resources:
        mem_mb=6000,
    wildcard_constraints:
        preset=PRESET_PATTERN,
        seed="\d+",
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml synthetic-components --preset {wildcards.preset} --seed {wildcards.seed}"
        " --out {output} > {log} 2>&1"
