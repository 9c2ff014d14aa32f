# .mlpackage -> .mlmodelc with Apple's compiler (macOS only). It runs where the Snakemake
# process runs; on another host the app-folder targets stop before any job (see
# check_host_before_jobs in common.smk).


localrules:
    compile_package,


rule compile_package:
    input:
        package=ART.package_pattern(),
    output:
        directory(ART.compiled_pattern()),
    params:
        code=step_code("compile-package"),
        # A function, so Snakemake leaves the template's {package} fields alone.
        command=lambda wildcards: config["compiler"]["command"],
    log:
        ART.job_log("compile"),
    benchmark:
        ART.job_benchmark("compile")
    wildcard_constraints:
        deployment_target="\d+(\.\d+)*",
    resources:
        mem_mb=4000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml compile-package --package {input.package} --out {output}"
        " --compiler {params.command:q} --deployment-target {wildcards.deployment_target} > {log} 2>&1"
