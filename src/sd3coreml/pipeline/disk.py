"""Check before a build that its outputs fit on the disk and can be made, and its jobs in memory; name a full disk.

A conversion writes each weight about three times: the fp16 package (2 bytes a weight),
its compressed twin (1 byte, or less for palettes) and the folder's copy of that. The
estimate reads only safetensors headers, so it costs nothing before a multi-GB build.

Memory: the profiles' `mem_mb` total (22000, for the team's 24 GB machines) says nothing of the
machine a run is on; a job planned with more than its physical memory swaps or is killed.
"""

import errno
import math
import os
import shutil
import tempfile
from pathlib import Path

from sd3coreml.atomic import sibling_of
from sd3coreml.errors import PipelineError
from sd3coreml.inputs.checkpoint import read_tensor_table

BYTES_WRITTEN_PER_WEIGHT = 2 + 1 + 1
COMPONENT_WEIGHTS = ("text_encoder", "text_encoder_2", "vae")
# A write that failed for want of room: a full disk, a quota, a file-size limit (`ulimit -f`).
OUT_OF_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# coremltools writes every package's weights into a temporary folder first (tempfile's, so
# TMPDIR's); when that write fails its C++ writer raises a RuntimeError starting so, with no errno.
MIL_WRITER_FAILED = "[MIL FileWriter]"
# Snakemake's mem_mb counts megabytes of 10^6 bytes (its mem_mib is mem_mb * 0.954).
MB = 10**6
# Set by the macOS CI workflow: a hosted runner's 7 GB is below the demo jobs' declared figures
# (measured at SD3 Medium size), which the demo's tiny models never reach, and `make demo` and
# `make test` cannot pass --resources.
SKIP_MEMORY_CHECK = "SD3COREML_SKIP_MEMORY_CHECK"


def weight_count(table: dict, prefixes: tuple[str, ...] | None = None) -> int:
    """Weights in a tensor table, or in its tensors named with one of `prefixes` (a piece of a transformer)."""
    return sum(
        math.prod(entry["shape"]) for name, entry in table.items() if prefixes is None or name.startswith(prefixes)
    )


def component_weight_files(components: Path) -> list[Path]:
    return [path for name in COMPONENT_WEIGHTS for path in sorted((Path(components) / name).glob("*.safetensors"))]


def estimate_build_bytes(weight_files: list) -> int:
    """Bytes a build of these weights writes at most; files not yet on disk count zero.

    Each item is a file (every weight in it) or `(file, prefixes)`: only the tensors a
    planned piece converts, so one block range of a large transformer counts as itself.
    """
    selections = [item if isinstance(item, tuple) else (item, None) for item in weight_files]
    # Each file's header once, however many of its pieces are planned (a sweep plans dozens).
    tables = {path: read_tensor_table(path) for path, _ in selections if Path(path).is_file()}
    return BYTES_WRITTEN_PER_WEIGHT * sum(
        weight_count(tables[path], prefixes) for path, prefixes in selections if path in tables
    )


def nearest_existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def require_free_space(output_root: Path, weight_files: list[Path]) -> None:
    needed = estimate_build_bytes(weight_files)
    free = shutil.disk_usage(nearest_existing(output_root)).free
    if needed > free:
        raise PipelineError(
            f"{output_root}: the build writes up to {needed / 2**30:.1f} GiB but {free / 2**30:.1f} GiB are free; "
            "free some space or set output_root to a larger disk"
        )


def folder_in_the_way(output: Path) -> Path | None:
    """The nearest existing ancestor of `output` when it is no folder (so no job can write there)."""
    ancestor = Path(output).parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    return None if ancestor.is_dir() else ancestor


def require_creatable(outputs) -> None:
    """Every output's folder exists or can be made: a regular file in its place stops root too."""
    for output in outputs:
        blocker = folder_in_the_way(output)
        if blocker is not None:
            raise PipelineError(
                f"{blocker}: a file is in the way of the folder {blocker} that {output} needs; move or delete it"
            )


def final_name(path: str) -> str:
    """The artifact a temporary sibling (see atomic.py) stands for, so messages name what was asked for."""

    def part_name(part: str) -> str:
        found = sibling_of(part)
        return part if found is None else found[0]

    return str(Path(*(part_name(part) for part in Path(os.fsdecode(path)).parts)))


def out_of_room_message(error: OSError, where: str) -> str:
    """One line for a write that failed for want of room; `where` when the error names no file."""
    # A failed copy names its source first and the file it was writing second.
    written = error.filename2 or error.filename
    place = final_name(written) if written else where
    if error.errno == errno.EFBIG:
        return (
            f"{place}: file too large ({error.strerror}: the file-size limit, ulimit -f, or the filesystem's "
            "maximum); raise the limit or set output_root to another disk, and rerun"
        )
    return f"{place}: disk full ({error.strerror}); free space and rerun"


def temporary_weights_message(error: RuntimeError) -> str:
    """One line for coremltools' failed write of a package's weights into its temporary folder."""
    return (
        f"{tempfile.gettempdir()}: coremltools could not write a package's weights into its temporary folder "
        f"({error}): that disk is likely full, or a file-size limit (ulimit -f) was hit; free space there "
        "or set TMPDIR to a larger disk, and rerun"
    )


def job_outputs(jobs) -> list:
    """Every path Snakemake's `jobs` will write: outputs, logs and benchmark files."""
    return [path for job in jobs for path in [*job.output, *job.log, *([job.benchmark] if job.benchmark else [])]]


def physical_memory_mb() -> int:
    """This machine's physical memory in Snakemake's MB."""
    import psutil  # Snakemake's own dependency: always beside it

    return psutil.virtual_memory().total // MB


def job_label(job) -> str:
    outputs = list(job.output)
    return f"rule {job.rule.name}" + (f" ({outputs[0]})" if outputs else "")


def planned_memory(jobs, local_exec: bool) -> list[tuple[str, int]]:
    """(job, mem_mb) of each of Snakemake's planned `jobs` that runs on this machine.

    A job's mem_mb is Snakemake's `job.resources["mem_mb"]`: the rule's figure held to
    `--resources mem_mb`, what the scheduler gives it. Left out: jobs a cluster runs (not
    `local_exec` and not a local rule), jobs with none, and a figure a function computes from
    inputs this run has still to make (the end-to-end job's, before its weights exist, is a
    placeholder): Snakemake computes it again from the real files when the job is ready.
    """
    planned = []
    for job in jobs:
        if not (local_exec or job.is_local):
            continue
        mem_mb = dict(job.resources).get("mem_mb")
        if not isinstance(mem_mb, int):
            continue
        declared = job.rule.resources.get("mem_mb")
        if declared is not None and declared.is_evaluable() and not all(os.path.exists(path) for path in job.input):
            continue
        planned.append((job_label(job), mem_mb))
    return planned


def require_memory(planned: list[tuple[str, int]], physical_mb: int) -> None:
    """Refuse, in one line naming the job and the fix, when the largest planned job exceeds physical memory."""
    if not planned:
        return
    mem_mb, job = max((mem_mb, job) for job, mem_mb in planned)  # ties: the same job every run
    if mem_mb > physical_mb:
        fitting = max(1000, physical_mb * 85 // 100 // 1000 * 1000)
        raise PipelineError(
            f"{job} is planned with mem_mb={mem_mb}, more than this machine's {physical_mb} MB of memory, where it "
            f"would swap or be killed: run with --resources mem_mb={fitting} app_chain=1 to hold every job to what "
            "this machine has (a job that truly needs more still swaps), or build on a machine with more memory"
        )


def check_host(artifacts, outputs: list, models: dict, config: dict, memory: list | None = None) -> None:
    """Before any job: a folder for every output, Apple's compiler if compiles are planned, disk room,
    and memory for the largest planned job (`memory`: planned_memory's list)."""
    from sd3coreml.release.compile import require_compiler

    require_creatable(outputs)
    if any(str(path).startswith(f"{artifacts.root}/compiled/") for path in outputs):
        targets = " or ".join(Path(artifacts.folder(model, "packages")).name for model in models)
        require_compiler(config["compiler"]["command"], targets)
    require_free_space(Path(artifacts.root), artifacts.weights_to_convert(outputs, models, Path(config["components"])))
    if memory and not os.environ.get(SKIP_MEMORY_CHECK):
        require_memory(memory, physical_memory_mb())
