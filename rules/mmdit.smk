# The MMDiT in the app's pieces, fp16: Conditioning, Stage0 (input), and block ranges.
# A block range's path names its content (model, target, latent, blocks, head), so layouts
# that share a range share the package.



rule mmdit_conditioning:
    input:
        unpack(transformer_inputs),
    output:
        directory(f"{ROOT}/mmdit/{{model}}/{{target}}/conditioning.fp16.mlpackage"),
    params:
        config=transformer_config,
        config_sha256=transformer_config_sha256,
        code=step_code("convert-conditioning"),
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        f"{ROOT}/logs/mmdit/{{model}}/{{target}}/conditioning.log",
    benchmark:
        f"{ROOT}/benchmarks/mmdit/{{model}}/{{target}}/conditioning.tsv"
    resources:
        mem_mb=2000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml convert-conditioning --weights {input.weights} --config {params.config}"
        " --target {wildcards.target} --out {output} > {log} 2>&1"


rule mmdit_input_stage:
    input:
        unpack(transformer_inputs),
    output:
        directory(f"{ROOT}/mmdit/{{model}}/{{target}}/latent{{height}}x{{width}}/input.fp16.mlpackage"),
    params:
        config=transformer_config,
        config_sha256=transformer_config_sha256,
        code=step_code("convert-input-stage"),
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        f"{ROOT}/logs/mmdit/{{model}}/{{target}}/latent{{height}}x{{width}}/input.log",
    benchmark:
        f"{ROOT}/benchmarks/mmdit/{{model}}/{{target}}/latent{{height}}x{{width}}/input.tsv"
    resources:
        mem_mb=2000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml convert-input-stage --weights {input.weights} --config {params.config}"
        " --latent {wildcards.height} {wildcards.width} --target {wildcards.target} --out {output} > {log} 2>&1"


rule mmdit_block_range:
    input:
        unpack(transformer_inputs),
    output:
        directory(
            f"{ROOT}/mmdit/{{model}}/{{target}}/latent{{height}}x{{width}}/blocks{{start}}-{{end}}{{head}}.fp16.mlpackage"
        ),
    params:
        config=transformer_config,
        config_sha256=transformer_config_sha256,
        code=step_code("convert-block-range"),
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        f"{ROOT}/logs/mmdit/{{model}}/{{target}}/latent{{height}}x{{width}}/blocks{{start}}-{{end}}{{head}}.log",
    benchmark:
        f"{ROOT}/benchmarks/mmdit/{{model}}/{{target}}/latent{{height}}x{{width}}/blocks{{start}}-{{end}}{{head}}.tsv"
    resources:
        mem_mb=4000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml convert-block-range --weights {input.weights} --config {params.config}"
        " --start {wildcards.start} --end {wildcards.end} --latent {wildcards.height} {wildcards.width}"
        " --target {wildcards.target} --out {output} > {log} 2>&1"
