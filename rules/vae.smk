# The SD3 VAE decoder, fp16 (it stays uncompressed); shared by every model.


rule vae_decoder:
    input:
        components=config["components"],
    output:
        directory(f"{ROOT}/vae/{{target}}/latent{{height}}x{{width}}/VAEDecoder.fp16.mlpackage"),
    params:
        code=step_code("convert-vae-decoder"),
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        f"{ROOT}/logs/vae/{{target}}/latent{{height}}x{{width}}.log",
    benchmark:
        f"{ROOT}/benchmarks/vae/{{target}}/latent{{height}}x{{width}}.tsv"
    resources:
        mem_mb=6000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml convert-vae-decoder --vae {input.components}/vae"
        " --latent {wildcards.height} {wildcards.width} --target {wildcards.target} --out {output} > {log} 2>&1"
