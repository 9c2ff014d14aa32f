"""Remove the artifacts no configured target references, and say how much disk that freed.

What is referenced comes from Snakemake itself: `snakemake --summary` over the configured
targets lists every output of their DAG, built or not. Only the generated artifact families
under the output root are candidates; inputs (checkpoints, downloads, components) never
are. Logs and benchmark files are kept: they are small, and the sweep reads benchmarks.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from sd3coreml import checksums
from sd3coreml.atomic import remove_path
from sd3coreml.errors import PipelineError
from sd3coreml.pipeline.artifacts import FOLDER_PREFIX, GENERATED, is_folder_name

MIB = 1024 * 1024


def referenced_outputs(snakefile: str, config_json: str, targets: list[str]) -> set[Path]:
    """Every output file or folder of the targets' DAG, from `snakemake --summary`."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as configfile:
        configfile.write(config_json)  # JSON is YAML: the run's config exactly, defaults filled in
        configfile.flush()
        command = [sys.executable, "-m", "snakemake", "--snakefile", snakefile, "--summary", "--nolock"]
        command += [*targets, "--configfile", configfile.name]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise PipelineError(f"snakemake --summary {' '.join(targets)} failed: {last}")
    lines = result.stdout.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("output_file\t"))
    return {Path(line.split("\t", 1)[0]) for line in lines[start + 1 :] if line.strip()}


def unreferenced(root: Path, keep: set[Path]) -> list[Path]:
    """Artifacts under the families of `root` that no kept path is, or lies inside."""
    keep = {Path(os.path.normpath(path)) for path in keep}
    # A folder's declared output is its SHA256SUMS; the files it lists come with it.
    keep |= {path.parent for path in keep if path.name == checksums.SUMS_NAME and is_folder_name(path.parent.name)}
    ancestors = {parent for path in keep for parent in path.parents}
    found = []

    def visit(path: Path) -> None:
        if path in keep:
            return
        if path.is_dir() and not path.is_symlink() and path in ancestors:
            for child in sorted(path.iterdir()):
                visit(child)
            return
        found.append(path)

    families = [root / family for family in GENERATED]
    families += sorted(path for path in root.glob(f"{FOLDER_PREFIX}*") if path.is_dir())
    for family in families:
        if family.exists():
            visit(family)
    return found


def disk_bytes(path: Path) -> int:
    return checksums.tree_bytes(path, allocated=True)


def remove_artifact(path: Path) -> None:
    # Renamed aside first: an interrupted cleanup never leaves half a package under its name.
    aside = path.parent / f".{path.name}.old-{os.getpid()}"
    os.rename(path, aside)
    remove_path(aside)


def clean(root: Path, keep: set[Path], dry_run: bool) -> str:
    if not root.is_dir():
        raise PipelineError(f"{root}: no such output root; nothing to clean (check config key 'output_root')")
    removed = unreferenced(root, keep)
    freed = 0
    for path in removed:
        size = disk_bytes(path)
        freed += size
        print(f"{'would remove' if dry_run else 'removed'} {path} ({size / MIB:.1f} MiB)")
        if not dry_run:
            remove_artifact(path)
    verb = "would free" if dry_run else "freed"
    return f"cleanup: {len(removed)} unreferenced artifacts, {verb} {freed / MIB:.1f} MiB ({root})"
