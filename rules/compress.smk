# Weight compression of any fp16 package, by a separate job: the output's name carries the
# settings, so changing them never reconverts the fp16 package.


rule compress_package:
    input:
        package=f"{ROOT}/{{path}}.fp16.mlpackage",
    output:
        directory(f"{ROOT}/{{path}}.{{compression}}.mlpackage"),
    params:
        code=step_code("compress-package"),
        compression=compression_args,
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        f"{ROOT}/logs/compress/{{path}}.{{compression}}.log",
    benchmark:
        f"{ROOT}/benchmarks/compress/{{path}}.{{compression}}.tsv"
    resources:
        mem_mb=4000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml compress-package --package {input.package} --out {output}"
        " {params.compression} > {log} 2>&1"
