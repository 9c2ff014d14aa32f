"""The session build ran in the warm job server (sd3coreml/job_server.py); its bytes are those of jobs
run in processes of their own.

tests/workflow/test_reproducible.py rebuilds, without the server, the 4-step folder's last stage
(fp16 conversion, int8 compression), its check and the folder itself, and compares SHA256SUMS
(manifest.json included); test_palettes_are_bit_identical_elsewhere_a_year_later does a per-tensor
palettization, tests/demo/test_frameworks_with_peft.py the VAE. Here a copy of the build makes
again, without the server, a job of each other kind of step whose output reaches a folder, where
the modules a served child holds differ from its own process's (the synthetic checkpoints' jobs
import all of them anyway): scikit-learn's grouped palettes, the text encoder (transformers
visible to coremltools), the conditioning and the tokenizer files.
"""

import re

from harness import MODULE_RECORDS, copy_of_build, planned_jobs, snakemake

from sd3coreml import checksums
from sd3coreml.atomic import remove_path

ROOT = "results/demo"
REBUILT = (
    "text_encoders/iOS18/TextEncoder.fp16.mlpackage",
    "mmdit/4step/iOS18/conditioning.fp16.mlpackage",
    "mmdit/4step/iOS18/latent16x16/input.palettize4_per_grouped_channel8.mlpackage",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
)
JOBS = {"text_encoder": 1, "mmdit_conditioning": 1, "compress_package": 1, "tokenizer_files": 1}


def test_every_job_of_the_session_build_ran_in_the_job_server(demo_build, demo_build_record):
    """Each job wrote its module record as `<step>-<pid>.json` (tests/job_hooks): its pid is a child's of the
    server that the building worker started (its log, read when the build ended)."""
    jobs = {
        int(re.search(r"-(\d+)$", path.stem).group(1)): path.stem for path in (demo_build / MODULE_RECORDS).iterdir()
    }
    served = {int(pid) for pid in demo_build_record["served"]}
    assert jobs, "the session build recorded no job"
    assert [name for pid, name in jobs.items() if pid not in served] == []


def test_served_jobs_write_the_bytes_of_jobs_of_their_own(demo_build, tmp_path):
    workdir = copy_of_build(demo_build, tmp_path / "own-processes")
    for path in REBUILT:
        remove_path(workdir / ROOT / path)
    result = snakemake(workdir, "-c2", *(f"{ROOT}/{path}" for path in REBUILT), job_server=False)
    assert planned_jobs(result) == JOBS
    differing = [
        path
        for path in REBUILT
        if checksums.tree_sha256(workdir / ROOT / path) != checksums.tree_sha256(demo_build / ROOT / path)
    ]
    assert differing == []
