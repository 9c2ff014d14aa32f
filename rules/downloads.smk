# Pinned Hugging Face downloads (config 'downloads'): one rule per file and per snapshot,
# placed at <downloads.root>/<name>, the paths components and models.*.weights name. No
# rules when the key is absent. The pins are the params, so a new pin downloads again;
# the library module is no input: the pinned sha256 alone decides the content, and a
# rerun would make every conversion downstream look outdated.


for download in DOWNLOADED_FILES:

    rule:
        name:
            download.rule
        output:
            download.out,
        params:
            pin=download.pin,
        log:
            ART.log(f"downloads/{download.name}"),
        benchmark:
            ART.benchmark(f"downloads/{download.name}")
        resources:
            mem_mb=1000,
        conda:
            "../envs/convert.yaml"
        shell:
            "python -m sd3coreml download-file --repo {params.pin[repo]:q} --filename {params.pin[filename]:q}"
            " --revision {params.pin[revision]:q} --sha256 {params.pin[sha256]:q} --out {output:q} > {log:q} 2>&1"


for download in DOWNLOADED_SNAPSHOTS:

    rule:
        name:
            download.rule
        output:
            directory(download.out),
        params:
            pin=download.pin,
        log:
            ART.log(f"downloads/{download.name}"),
        benchmark:
            ART.benchmark(f"downloads/{download.name}")
        resources:
            mem_mb=1000,
        conda:
            "../envs/convert.yaml"
        shell:
            "python -m sd3coreml download-snapshot --repo {params.pin[repo]:q} --revision {params.pin[revision]:q}"
            " --pins-json {params.pin[files]:q} --out {output:q} > {log:q} 2>&1"
