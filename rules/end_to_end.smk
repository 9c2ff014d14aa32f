# End to end: a prompt through a packages folder as the app runs it, against stock diffusers
# (StableDiffusion3Pipeline without T5, AutoencoderKL.decode). At full scale this is the slow
# part of `verify`: the reference runs the whole transformer in fp32 (SD3 Medium size: 13 min,
# 16.7 GiB peak on 2 cores).
#
# On a Mac (ON_MACOS) the same chain also runs in Core ML, each package compiled once and loaded
# at every step as the app does: end_to_end_coreml, its own report beside the executor's, so a
# Mac over Linux-built results adds it without running the executor's check again.


rule end_to_end:
    input:
        weights=get_transformer_weights,
        folder=ART.sums("{model}", "packages"),
        components=config["components"],
    output:
        json=ART.report("{model}", "end_to_end.json"),
        png=report(
            ART.report("{model}", "end_to_end.png"),
            caption="../report/end_to_end.rst",
            category="Samples",
            labels={"folder": folder_name("{model}", "packages")},
        ),
    params:
        config=get_transformer_config,
        config_sha256=get_transformer_config_sha256,
        code=step_code("end-to-end"),
        steps=get_sampler_steps,
        shift=get_timestep_shift,
        seed=VERIFY_SEED,
        min_psnr_db=get_end_to_end_bar,
        prompt=config["fidelity"]["prompt"],
        runner=EXECUTOR_RUNNER,
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.log(f"end_to_end/{folder_name('{model}', 'packages')}"),
    benchmark:
        ART.benchmark(f"end_to_end/{folder_name('{model}', 'packages')}")
    resources:
        mem_mb=get_end_to_end_mem_mb,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml end-to-end --folder $(dirname {input.folder}) --weights {input.weights}"
        " --config {params.config} --components {input.components} --steps {params.steps} --seed {params.seed}"
        " --shift {params.shift} --min-psnr-db {params.min_psnr_db} --prompt {params.prompt:q} --out-json {output.json}"
        " --out-png {output.png} --runner {params.runner} > {log} 2>&1"


# Core ML's chain against the same reference, under Core ML's own bar (fidelity.coreml_min_psnr_db),
# which fails the check only with fidelity.enforce_coreml.
use rule end_to_end as end_to_end_coreml with:
    output:
        json=ART.report("{model}", "end_to_end_coreml.json"),
        png=report(
            ART.report("{model}", "end_to_end_coreml.png"),
            caption="../report/end_to_end.rst",
            category="Samples",
            labels={"folder": folder_name("{model}", "packages") + " (Core ML)"},
        ),
    params:
        min_psnr_db=config["fidelity"]["coreml_min_psnr_db"],
        runner=get_coreml_end_to_end_runner,
    log:
        ART.log(f"end_to_end_coreml/{folder_name('{model}', 'packages')}"),
    benchmark:
        ART.benchmark(f"end_to_end_coreml/{folder_name('{model}', 'packages')}")
    resources:
        mem_mb=get_end_to_end_mem_mb,
        neural_engine=1,
