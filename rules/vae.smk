# The SD3 VAE decoder, fp16 (it stays uncompressed); shared by every model.


rule vae_decoder:
    input:
        components=config["components"],
    output:
        directory(ART.piece("vae_decoder", "fp16")),
    params:
        code=step_code("convert-vae-decoder"),
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.job_log("convert", path=PIECES["vae_decoder"]),
    benchmark:
        ART.job_benchmark("convert", path=PIECES["vae_decoder"])
    resources:
        mem_mb=6000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml convert-vae-decoder --vae {input.components}/vae"
        " --latent {wildcards.height} {wildcards.width} --target {wildcards.target} --out {output} > {log} 2>&1"
