# Disk: `snakemake cleanup` removes the artifacts no configured target references (an old
# layout's block ranges, a compression no longer configured) and says how much it freed;
# `cleanup_preview` lists them and removes nothing. Snakemake's own DAG (--summary) decides.

import os


for name, flags in (("cleanup", ""), ("cleanup_preview", "--dry-run")):

    rule:
        name:
            name
        localrule: True
        params:
            root=ROOT,
            config=lambda wildcards: json.dumps(config),
            snakefile=os.path.relpath(workflow.main_snakefile),
            targets=jobs.referenced_targets(MODELS, SWEEP),
            flags=flags,
        log:
            ART.log(name),
        conda:
            "../envs/convert.yaml"
        shell:
            "python -m sd3coreml cleanup --root {params.root:q} --snakefile {params.snakefile:q}"
            " --config-json {params.config:q} --targets {params.targets} {params.flags} 2>&1 | tee {log}"
