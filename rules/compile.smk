# .mlpackage -> .mlmodelc with Apple's compiler (macOS only). It runs where the Snakemake
# process runs; on another host the app-folder targets stop before any job (see
# check_host_before_jobs in common.smk).


localrules:
    compile_package,


rule compile_package:
    input:
        package=f"{ROOT}/{{path}}.mlpackage",
    output:
        directory(f"{ROOT}/compiled/ios{{deployment_target}}/{{path}}.mlmodelc"),
    params:
        code=step_code("compile-package"),
        command=compiler_command,
    log:
        f"{ROOT}/logs/compile/ios{{deployment_target}}/{{path}}.log",
    benchmark:
        f"{ROOT}/benchmarks/compile/ios{{deployment_target}}/{{path}}.tsv"
    wildcard_constraints:
        deployment_target="\d+(\.\d+)*",
    resources:
        mem_mb=4000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml compile-package --package {input.package} --out {output}"
        " --compiler {params.command:q} --deployment-target {wildcards.deployment_target} > {log} 2>&1"

