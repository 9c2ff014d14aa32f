# The user-facing folders: packages (any OS) and the app's compiled folder (macOS).
# Their declared output is SHA256SUMS, a file: a directory() output would get Snakemake's
# .snakemake_timestamp marker inside, and nothing of the build machinery may reach a folder.
# Host and time facts go to reports/<folder>/build_host.json, outside the folder.


rule packages_folder:
    input:
        unpack(get_folder_inputs("packages")),
        # Only a build whose packages passed their fidelity checks becomes a folder.
        fidelity=ART.report("{model}", "fidelity.json"),
    output:
        sums=ART.sums("{model}", "packages"),
        record=ART.build_record(folder_name("{model}", "packages")),
    params:
        code=step_code("assemble-folder"),
        spec=get_folder_spec("packages"),
    log:
        ART.log(f"folders/{folder_name('{model}', 'packages')}"),
    benchmark:
        ART.benchmark(f"folders/{folder_name('{model}', 'packages')}")
    resources:
        mem_mb=1000,
    conda:
        "../envs/convert.yaml"
    shell:
        "echo {params.spec:q} | python -m sd3coreml assemble-folder --spec - --out $(dirname {output.sums})"
        " --build-record {output.record} > {log} 2>&1"


rule app_folder:
    input:
        unpack(get_folder_inputs("app")),
        packages=get_compiled_packages,
        fidelity=ART.report("{model}", "fidelity.json"),
    output:
        sums=ART.sums("{model}", "app"),
        record=ART.build_record(folder_name("{model}", "app")),
    params:
        code=step_code("assemble-folder"),
        spec=get_folder_spec("app"),
    log:
        ART.log(f"folders/{folder_name('{model}', 'app')}"),
    benchmark:
        ART.benchmark(f"folders/{folder_name('{model}', 'app')}")
    resources:
        mem_mb=1000,
    conda:
        "../envs/convert.yaml"
    shell:
        "echo {params.spec:q} | python -m sd3coreml assemble-folder --spec - --out $(dirname {output.sums})"
        " --build-record {output.record} > {log} 2>&1"
