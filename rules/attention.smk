# A block range converted with its attention split per head (config models.<name>.attention,
# a sweep's attentions; docs/ATTENTION.md) is its own artifact beside the joint one. Besides its
# own fidelity check against diffusers (rules/fidelity.smk, as every package), it is held
# against its joint twin at the same precision: same seeded inputs, both run by the executor,
# under fidelity.attention_min_psnr_db. A folder or sweep row holding a split stage needs it.


rule verify_attention_against_joint:
    input:
        package=ART.piece("block_range"),
        joint=ART.joint_twin_pattern(),
    output:
        ART.against_joint_pattern(),
    params:
        code=step_code("verify-attention"),
        seed=VERIFY_SEED,
        min_psnr_db=config["fidelity"]["attention_min_psnr_db"],
        toolchain=TOOLCHAIN_FINGERPRINT,
    wildcard_constraints:
        # Only a split package has a joint twin to be held against.
        attention=ATTENTION_VARIANTS,
    log:
        ART.job_log("against_joint", path=PIECES["block_range"]),
    benchmark:
        ART.job_benchmark("against_joint", path=PIECES["block_range"])
    resources:
        mem_mb=4000,
    conda:
        "../envs/convert.yaml"
    shell:
        "python -m sd3coreml verify-attention --package {input.package} --joint {input.joint}"
        " --seed {params.seed} --min-psnr-db {params.min_psnr_db} --out {output} > {log} 2>&1"
