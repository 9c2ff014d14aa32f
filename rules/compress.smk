# Weight compression of any fp16 package, by a separate job: the output's name carries the
# settings (compress/settings.py), so changing them never reconverts the fp16 package.
# Three rules, one step: palettes per tensor use the job's threads (compress/palettes.py), so a
# profile can give them more (profiles/full-scale); linear quantization and grouped palettes
# run on one; a recipe (compress/recipes.py, named by its content) reads its file as an input.


rule compress_package:
    input:
        package=ART.package_pattern("fp16"),
    output:
        directory(ART.compressed_pattern()),
    params:
        code=step_code("compress-package"),
        compression=get_compression_flags,
        toolchain=TOOLCHAIN_FINGERPRINT,
    log:
        ART.job_log("compress"),
    benchmark:
        ART.job_benchmark("compress")
    wildcard_constraints:
        compression=SINGLE_THREAD_SLUG,
    resources:
        mem_mb=4000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml compress-package --package {input.package} --out {output}"
        " {params.compression} --threads {threads} > {log} 2>&1"


use rule compress_package as palettize_per_tensor with:
    wildcard_constraints:
        compression=TENSOR_PALETTE_SLUG,
    threads: 1


use rule compress_package as compress_by_recipe with:
    input:
        package=ART.package_pattern("fp16"),
        recipe=get_recipe_file,
    params:
        compression=get_recipe_flags,
    wildcard_constraints:
        compression=RECIPE_SLUG,
    threads: 1


# 8-bit activations (a setting's slug ends in _a8): the activations quantized by the package's
# ranges (rules/sensitivity.smk), then the weights by the rest of the setting, in one job.
use rule compress_package as quantize_activations_and_weights with:
    input:
        package=ART.package_pattern("fp16"),
        ranges=ART.activation_ranges(),
        recipe=get_activations_recipe,
    params:
        compression=lambda wildcards, input: f"{get_activations_flags(wildcards)} --activation-ranges {input.ranges}",
    wildcard_constraints:
        compression=A8_SLUG,
    threads: 1
