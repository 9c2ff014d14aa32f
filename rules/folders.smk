# The user-facing folders: packages (any OS) and the app's compiled folder (macOS).
# Their declared output is SHA256SUMS, a file: a directory() output would get Snakemake's
# .snakemake_timestamp marker inside, and nothing of the build machinery may reach a folder.
# Host and time facts go to reports/<folder>/build_host.json, outside the folder.


# The exact versions of the toolchain that builds under this fingerprint (release/toolchain.py),
# written once: a folder's manifest records them, so a folder assembled on a Mac from packages
# built on Linux records Linux's toolchain, and its SHA256SUMS do not follow the assembling host.
rule toolchain_record:
    output:
        TOOLCHAIN_RECORD,
    log:
        ART.log("toolchain_record"),
    localrule: True
    run:
        toolchain.write_record(output[0], TOOLCHAIN, log[0])


rule packages_folder:
    input:
        unpack(folder_inputs_of("packages")),
        # Only a build whose packages passed their fidelity checks becomes a folder (on a Mac with
        # fidelity.enforce_coreml, Core ML's report too: get_fidelity_gates).
        unpack(get_fidelity_gates),
        # Split-attention stages held against their joint twins (rules/attention.smk).
        attention=get_attention_checks,
        toolchain=TOOLCHAIN_RECORD,
        # Recipes made from a budget: the manifest records each by hash (none for other settings).
        recipes=get_generated_recipes,
    output:
        sums=ART.sums("{model}", "packages"),
        record=ART.build_record(folder_name("{model}", "packages")),
    params:
        code=step_code("assemble-folder"),
        spec=folder_spec_of("packages"),
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


use rule packages_folder as app_folder with:
    input:
        unpack(folder_inputs_of("app")),
        unpack(get_fidelity_gates),
        packages=get_compiled_packages,
        # Split-attention stages held against their joint twins (rules/attention.smk).
        attention=get_attention_checks,
        toolchain=TOOLCHAIN_RECORD,
        recipes=get_generated_recipes,
    output:
        sums=ART.sums("{model}", "app"),
        record=ART.build_record(folder_name("{model}", "app")),
    params:
        spec=folder_spec_of("app"),
    log:
        ART.log(f"folders/{folder_name('{model}', 'app')}"),
    benchmark:
        ART.benchmark(f"folders/{folder_name('{model}', 'app')}")
