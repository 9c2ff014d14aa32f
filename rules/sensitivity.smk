# Recipes made from a budget (compression `{mode: recipe, budget: {bits_per_weight: 4.5}}`): the
# calibration inputs of a model's chain, one analysis per MMDiT piece (conditioning, input and each
# joint block, the last holding the head's weights too: one job each, so a cluster spreads them),
# and the recipe of the budget over all of them. Planned only where a budget is configured: the
# compress jobs of its packages read the recipe (rules/compress.smk). Each job fixes its threads
# (config sensitivity.threads), so its figures do not follow the machine.


rule capture_calibration:
    input:
        weights=get_transformer_weights,
        components=config["components"],
    output:
        directory(ART.calibration()),
    params:
        config=get_transformer_config,
        config_sha256=get_transformer_config_sha256,
        code=step_code("capture-calibration"),
        prompts=CALIBRATION_PROMPTS,
        steps=get_sampler_steps,
        shift=get_timestep_shift,
        seed=config["sensitivity"]["seed"],
        latent=config["latent_size"],
        threads=config["sensitivity"]["threads"],
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.job_log("calibration"),
    benchmark:
        ART.job_benchmark("calibration")
    threads: config["sensitivity"]["threads"]
    resources:
        # SD3 Medium size, 1 prompt: 4.97 GB with both encoders loaded at once (now one at a time).
        mem_mb=6000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml capture-calibration --weights {input.weights} --config {params.config}"
        " --components {input.components} {params.prompts} --steps {params.steps} --shift {params.shift}"
        " --seed {params.seed} --latent {params.latent} --threads {params.threads} --out {output} > {log} 2>&1"


rule analyse_weights:
    input:
        weights=get_transformer_weights,
        calibration=ART.calibration(),
    output:
        ART.analysis(),
    params:
        config=get_transformer_config,
        config_sha256=get_transformer_config_sha256,
        code=step_code("analyse-weights"),
        widths=config["sensitivity"]["widths"],
        min_values=config["sensitivity"]["min_values"],
        probe_widths=config["sensitivity"]["probe_widths"],
        probe_samples=config["sensitivity"]["probe_samples"],
        threads=config["sensitivity"]["threads"],
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.job_log("analysis"),
    benchmark:
        ART.job_benchmark("analysis")
    threads: config["sensitivity"]["threads"]
    resources:
        # One SD3 Medium joint block, default settings, 2 threads: 3.14 GB.
        mem_mb=4000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml analyse-weights --weights {input.weights} --config {params.config}"
        " --calibration {input.calibration} --piece {wildcards.piece} --widths {params.widths}"
        " --min-values {params.min_values} --probe-widths {params.probe_widths} --probe-samples {params.probe_samples}"
        " --threads {params.threads} --out {output} > {log} 2>&1"


rule recipe_from_budget:
    input:
        analyses=get_model_analyses,
    output:
        recipe=ART.recipe(),
        report=ART.recipe(report=True),
    params:
        code=step_code("recipe-from-budget"),
        budget=get_recipe_budget,
    log:
        ART.job_log("recipe"),
    benchmark:
        ART.job_benchmark("recipe")
    wildcard_constraints:
        compression=RECIPE_BUDGET_SLUG,
    resources:
        mem_mb=1000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml recipe-from-budget --analyses {input.analyses} --budget {params.budget}"
        " --out {output.recipe} --report {output.report} > {log} 2>&1"


# ml-stable-diffusion's per-layer threshold rule at a budget recipe's bytes, from the same analyses:
# built on request (`snakemake <root>/recipes/<model>/recipe-bpw4.per_layer_threshold.json`) and
# given to a sweep as a file mode, so the allocation is measured against it (docs/COMPRESSION.md).
rule threshold_recipe_from_budget:
    input:
        analyses=get_model_analyses,
    output:
        ART.threshold_recipe(),
    params:
        code=step_code("recipe-from-budget"),
        budget=get_recipe_budget,
    log:
        ART.job_log("threshold_recipe"),
    wildcard_constraints:
        compression=RECIPE_BUDGET_SLUG,
    resources:
        mem_mb=1000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml recipe-from-budget --analyses {input.analyses} --budget {params.budget}"
        " --rule per_layer_threshold --out {output} > {log} 2>&1"


# The text encoders' twins (a budget given to compression.text_encoders): calibrated on the prompts
# alone, each encoder analysed apart, and one budget allocated over both, a recipe per encoder.


rule capture_text_calibration:
    input:
        components=config["components"],
    output:
        directory(ART.text_calibration()),
    params:
        code=step_code("capture-text-calibration"),
        prompts=CALIBRATION_PROMPTS,
        threads=config["sensitivity"]["threads"],
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.job_log("text_calibration"),
    benchmark:
        ART.job_benchmark("text_calibration")
    wildcard_constraints:
        prompts=TEXT_PROMPTS_ID,
    threads: config["sensitivity"]["threads"]
    resources:
        # SD3 Medium size, 4 prompts, encoders one at a time: 4.58 GB peak (CLIP-G loaded in float32).
        mem_mb=5000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml capture-text-calibration --components {input.components} {params.prompts}"
        " --threads {params.threads} --out {output} > {log} 2>&1"


rule analyse_text_encoder:
    input:
        components=config["components"],
        calibration=ART.text_calibration(),
    output:
        ART.text_analysis(),
    params:
        code=step_code("analyse-text-encoder"),
        widths=config["sensitivity"]["widths"],
        min_values=config["sensitivity"]["min_values"],
        probe_widths=config["sensitivity"]["probe_widths"],
        probe_samples=config["sensitivity"]["probe_samples"],
        threads=config["sensitivity"]["threads"],
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.job_log("text_analysis"),
    benchmark:
        ART.job_benchmark("text_analysis")
    wildcard_constraints:
        prompts=TEXT_PROMPTS_ID,
    threads: config["sensitivity"]["threads"]
    resources:
        # SD3 Medium size: CLIP-G 4.48 GB peak (in float32, with the text encoders' group bounds).
        mem_mb=5000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml analyse-text-encoder --components {input.components} --calibration {input.calibration}"
        " --encoder {wildcards.encoder} --widths {params.widths} --min-values {params.min_values}"
        " --probe-widths {params.probe_widths} --probe-samples {params.probe_samples}"
        " --threads {params.threads} --out {output} > {log} 2>&1"


rule text_recipe_from_budget:
    input:
        analyses=get_text_analyses,
    output:
        TextEncoder=ART.text_recipe(encoder="TextEncoder"),
        TextEncoder2=ART.text_recipe(encoder="TextEncoder2"),
        report=ART.text_recipe(report=True),
    params:
        code=step_code("recipe-from-budget"),
        budget=get_recipe_budget,
    log:
        ART.job_log("text_recipe"),
    benchmark:
        ART.job_benchmark("text_recipe")
    wildcard_constraints:
        compression=RECIPE_BUDGET_SLUG,
    resources:
        mem_mb=1000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml recipe-from-budget --analyses {input.analyses} --budget {params.budget}"
        " --recipe-of TextEncoder {output.TextEncoder} --recipe-of TextEncoder2 {output.TextEncoder2}"
        " --report {output.report} > {log} 2>&1"


# The activation ranges of an fp16 package (compression `activations: int8`): the extremes of the
# tensors coremltools' activation passes read, over the calibration inputs of the package's first
# piece (its model's calibration, or the text encoders'), computed by the executor; and the ops
# kept fp16 by their measured effect (sensitivity.activation_*).
rule activation_ranges:
    input:
        package=ART.package_pattern("fp16"),
        calibration=get_activation_calibration,
    output:
        ART.activation_ranges(),
    params:
        code=step_code("activation-ranges"),
        piece=get_activation_piece,
        probe_samples=config["sensitivity"]["activation_probe_samples"],
        min_snr_db=config["sensitivity"]["activation_min_snr_db"],
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.job_log("activation_ranges"),
    benchmark:
        ART.job_benchmark("activation_ranges")
    resources:
        mem_mb=4000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml activation-ranges --package {input.package} --calibration {input.calibration}"
        " --piece {params.piece} --probe-samples {params.probe_samples} --min-snr-db {params.min_snr_db}"
        " --out {output} > {log} 2>&1"
