# Weight compression of any fp16 package, by a separate job: the output's name carries the
# settings (compress/settings.py), so changing them never reconverts the fp16 package.


rule compress_package:
    input:
        package=ART.package_pattern("fp16"),
    output:
        directory(ART.compressed_pattern()),
    params:
        code=step_code("compress-package"),
        compression=get_compression_flags,
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.log("compress/{path}.{compression}"),
    benchmark:
        ART.benchmark("compress/{path}.{compression}")
    # One thread unless a profile sets more (set-threads): palettes per tensor use them.
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml compress-package --package {input.package} --out {output}"
        " {params.compression} --threads {threads} > {log} 2>&1"
