"""Assemble a resource folder (an app folder, or its packages twin).

The iOS app lists `MultiModalDiffusionTransformerStage<int>` and sorts the stages with no
gap check, so a stage left over from an older layout is silently run. A folder is
therefore never edited in place: it is built whole in a temporary sibling (copies of the
entries, then `manifest.json`, then `SHA256SUMS`) and swapped in for the old one, and any
failure leaves the old folder as it was.
"""

import os
import shutil
import sys
from pathlib import Path

from sd3coreml import checksums
from sd3coreml.atomic import fresh_temporary, remove_path, replace_path, write_json
from sd3coreml.contract import STAGE_NAME, STAGE_PREFIX
from sd3coreml.errors import PipelineError
from sd3coreml.release.manifest import (
    MANIFEST_NAME,
    build_id,
    build_manifest,
    complete_manifest,
    load_spec,
    write_manifest,
)

MODEL_SUFFIXES = (".mlpackage", ".mlmodelc")
RESERVED_NAMES = {MANIFEST_NAME, checksums.SUMS_NAME, checksums.SNAKEMAKE_MARKER}


def validate_entry_names(names) -> None:
    """Refuse names that are not single, plain folder entries of one consistent layout.

    Stages must be `MultiModalDiffusionTransformerStage<int>` numbered 0..N with no gap,
    and the models must all be `.mlpackage` or all `.mlmodelc`.
    """
    names = list(names)
    for name in names:
        _validate_plain_name(name)
    _validate_model_kind(names)
    _validate_stage_indices(names)


def _validate_plain_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or ".." in name or name.startswith("."):
        raise PipelineError(
            f"entry {name!r}: a folder entry is one plain name with no '/', '\\', '..' "
            "or leading '.'; use the contract name, e.g. TextEncoder.mlpackage"
        )
    if name in RESERVED_NAMES:
        raise PipelineError(f"entry {name!r}: written by assemble_folder itself; drop it from the entries")


def _validate_model_kind(names: list[str]) -> None:
    kinds = sorted({suffix for name in names for suffix in MODEL_SUFFIXES if name.endswith(suffix)})
    if len(kinds) > 1:
        raise PipelineError(
            f"entries mix {' and '.join(kinds)} models; a folder holds either packages or "
            "compiled models: compile every package (compile-folder) or none"
        )


def _validate_stage_indices(names: list[str]) -> None:
    indices = []
    for name in names:
        if not name.startswith(STAGE_PREFIX):
            continue
        match = STAGE_NAME.fullmatch(name)
        if match is None:
            raise PipelineError(
                f"entry {name!r}: stage names are {STAGE_PREFIX}<int>.mlpackage or "
                ".mlmodelc with no leading zeros; rename it"
            )
        indices.append(int(match.group(1)))
    if sorted(indices) != list(range(len(indices))):
        raise PipelineError(
            f"entries: stage indices {sorted(indices)} are not 0..{len(indices) - 1} without "
            "gaps or repeats; the app would silently run a wrong stage chain: fix the layout"
        )


def copy_content(source: Path, target: Path) -> None:
    """Copy a file or a folder's files by content only (no mtimes, no modes, no markers)."""
    if source.is_file():
        shutil.copyfile(source, target)
        return
    # Listing first refuses symlinks inside the tree before anything is created.
    files = checksums.list_tree_files(source)
    target.mkdir()
    for dirpath, dirnames, _ in os.walk(source):
        for name in dirnames:
            (target / Path(dirpath, name).relative_to(source)).mkdir()
    for relative_path, path in files:
        shutil.copyfile(path, target / relative_path)


def check_sources(entries: dict[str, Path]) -> None:
    """Every entry's source exists; checked before anything is copied."""
    for name, source in entries.items():
        if not Path(source).exists():
            raise PipelineError(f"entry {name!r}: source {source} does not exist; build it first")


def assemble_folder(entries: dict[str, Path], out_dir: Path, manifest: dict) -> None:
    """Build `out_dir` holding exactly `entries` (contract name -> source file or folder),
    `manifest.json` and `SHA256SUMS`, replacing any previous `out_dir` whole."""
    out_dir = Path(out_dir)
    validate_entry_names(entries)
    check_sources(entries)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = fresh_temporary(out_dir)
    try:
        staging.mkdir()
        for name, source in sorted(entries.items()):
            _copy_entry(name, Path(source), staging / name)
        write_manifest(build_manifest(manifest, staging), staging)
        checksums.write_sha256sums(staging)
        replace_path(staging, out_dir)
    finally:
        remove_path(staging)


def assemble_from_spec(spec_path: Path, out_dir: Path, build_record: Path | None = None) -> dict:
    """`assemble-folder`: the folder an assemble spec (manifest.folder_spec) describes; returns its manifest."""
    entries, request, packages = load_spec(spec_path)
    manifest = complete_manifest(request, packages)
    assemble_folder(entries, out_dir, manifest)
    if build_record:
        write_build_record(build_record, out_dir, build_id(manifest))
    return manifest


def _copy_entry(name: str, source: Path, target: Path) -> None:
    try:
        # A link named in the entries is the caller's choice (e.g. a shared tokenizer);
        # links inside a package are still refused by the listing.
        copy_content(source.resolve(), target)
    except OSError as error:
        raise PipelineError(
            f"entry {name!r}: copying {source} failed ({error}); free space or fix permissions and rerun"
        ) from None


def write_build_record(path: Path, out_dir: Path, folder_build_id: str) -> None:
    """Facts about this build's host and time, kept outside the folder so the folder stays
    byte-identical across hosts and days."""
    import datetime
    import platform

    record = {
        "build_id": folder_build_id,
        "folder": str(out_dir),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": sys.executable,
        "finished_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "source_date_epoch": os.environ.get("SOURCE_DATE_EPOCH"),
    }
    write_json(path, record)
