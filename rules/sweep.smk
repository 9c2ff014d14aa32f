# The stage-layout sweep (config `sweep`, config/sweeps.yaml): every layout's stage packages
# under every compression mode, each measured by the fidelity rules, summarised in
# reports/sweep/. Artifacts are named by content, so a block range two layouts share, or a
# stage two modes compress alike, is one job; the summary says what that sharing saved.

if SWEEP is None:

    rule sweep:
        localrule: True
        shell:
            "echo \"error: config has no 'sweep'; add e.g. 'sweep: {{name: demo}}' (see config/sweeps.yaml)\" >&2; exit 1"

else:

    rule sweep:
        input:
            [ART.sweep_report(f"summary.{ext}") for ext in ("csv", "md", "png")],

    rule sweep_summary:
        input:
            unpack(get_sweep_inputs),
        output:
            csv=ART.sweep_report("summary.csv"),
            md=ART.sweep_report("summary.md"),
            png=report(ART.sweep_report("summary.png"), caption="../report/sweep.rst", category="Sweep"),
            stages=ART.sweep_report("stages.csv"),
        params:
            code=step_code("sweep-summary"),
            plan=get_sweep_plan_json,
        log:
            ART.log("sweep/summary"),
        localrule: True
        conda:
            "../envs/convert.yaml"
        shell:
            "echo {params.plan:q} | python -m sd3coreml sweep-summary --spec - --out-dir $(dirname {output.csv}) > {log} 2>&1"


    # The app's chain with the fp16 MMDiT packages of the sweep's first layout, once per sweep:
    # what every mode's end-to-end check is held against.
    rule sweep_fp16_chain:
        input:
            unpack(get_fp16_chain_inputs),
        output:
            ART.sweep_fp16_chain(),
        params:
            code=step_code("sweep-fp16-chain"),
            spec=get_mode_check_spec,
        log:
            ART.log("sweep/fp16_chain"),
        benchmark:
            ART.benchmark("sweep/fp16_chain")
        resources:
            mem_mb=get_app_chain_mem_mb,
            app_chain=1,
        conda:
            "../envs/convert.yaml"
        shell:
            "echo {params.spec:q} | python -m sd3coreml sweep-fp16-chain --spec - --out {output} > {log} 2>&1"


    # One per compression mode, on the sweep's first layout: the app's chain with the mode's MMDiT
    # packages against the fp16 chain, encoders and VAE shared (the front's quality).
    rule sweep_end_to_end:
        input:
            unpack(get_mode_check_inputs),
        output:
            ART.sweep_end_to_end("{mode}"),
        params:
            code=step_code("sweep-end-to-end"),
            spec=get_mode_check_spec,
        log:
            ART.log("sweep/end_to_end/{mode}"),
        benchmark:
            ART.benchmark("sweep/end_to_end/{mode}")
        resources:
            mem_mb=get_app_chain_mem_mb,
            app_chain=1,
        conda:
            "../envs/convert.yaml"
        shell:
            "echo {params.spec:q} | python -m sd3coreml sweep-end-to-end --spec - --fp16-chain {input.fp16_chain}"
            " --out {output} > {log} 2>&1"


# macOS only (ON_MACOS): Core ML's placement of each op, first load and predict time of one
# stage package. One at a time (resource neural_engine, see profiles/mac): concurrent loads
# would share the Neural Engine and distort the times.
rule profile_on_device:
    input:
        package=ART.package_pattern(),
    output:
        ART.device_pattern(),
    params:
        code=step_code("profile-on-device"),
    log:
        ART.job_log("profile"),
    resources:
        neural_engine=1,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml profile-on-device --package {input.package} --out {output} > {log} 2>&1"
