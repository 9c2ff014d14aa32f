# The user-facing folders: packages (any OS) and the app's compiled folder (macOS).
# Their declared output is SHA256SUMS, a file: a directory() output would get Snakemake's
# .snakemake_timestamp marker inside, and nothing of the build machinery may reach a folder.
# Host and time facts go to reports/<folder>/build_host.json, outside the folder.


rule packages_folder:
    input:
        unpack(packages_folder_inputs),
        # Only a build whose packages passed their fidelity checks becomes a folder.
        fidelity=lambda wildcards: fidelity_report(wildcards.model),
    output:
        sums=f"{ROOT}/coremlsd3_{{model}}_packages/SHA256SUMS",
        record=build_record("coremlsd3_{model}_packages"),
    params:
        code=step_code("assemble-folder"),
        spec=packages_folder_spec,
    log:
        f"{ROOT}/logs/folders/coremlsd3_{{model}}_packages.log",
    benchmark:
        f"{ROOT}/benchmarks/folders/coremlsd3_{{model}}_packages.tsv"
    resources:
        mem_mb=1000,
    conda:
        "../envs/convert.yaml"
    shell:
        "echo {params.spec:q} | python -m sd3coreml assemble-folder --spec - --out $(dirname {output.sums})"
        " --build-record {output.record} > {log} 2>&1"


rule app_folder:
    input:
        unpack(app_folder_inputs),
        packages=lambda wildcards: list(compiled_from(wildcards).values()),
        fidelity=lambda wildcards: fidelity_report(wildcards.model),
    output:
        sums=f"{ROOT}/coremlsd3_{{model}}/SHA256SUMS",
        record=build_record("coremlsd3_{model}"),
    params:
        code=step_code("assemble-folder"),
        spec=app_folder_spec,
    log:
        f"{ROOT}/logs/folders/coremlsd3_{{model}}.log",
    benchmark:
        f"{ROOT}/benchmarks/folders/coremlsd3_{{model}}.tsv"
    resources:
        mem_mb=1000,
    conda:
        "../envs/convert.yaml"
    shell:
        "echo {params.spec:q} | python -m sd3coreml assemble-folder --spec - --out $(dirname {output.sums})"
        " --build-record {output.record} > {log} 2>&1"
