"""Assemble a resource folder (the app's `coremlsd3_*` folders, or their packages twins).

The iOS app lists `MultiModalDiffusionTransformerStage<int>` and sorts the stages with no
gap check, so a stage left over from an older layout is silently run. A folder is
therefore never edited in place: it is built whole in a temporary sibling (copies of the
entries, then `manifest.json`, then `SHA256SUMS`) and swapped in for the old one, and any
failure leaves the old folder as it was.
"""

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from sd3coreml import checksums
from sd3coreml.atomic import fresh_temporary, remove_path, replace_path, write_json
from sd3coreml.contract import STAGE_NAME, STAGE_PREFIX
from sd3coreml.errors import PipelineError

MANIFEST_NAME = "manifest.json"
MODEL_SUFFIXES = (".mlpackage", ".mlmodelc")
RESERVED_NAMES = {MANIFEST_NAME, checksums.SUMS_NAME, checksums.SNAKEMAKE_MARKER}
MANIFEST_KEYS_WE_WRITE = ("files", "build_id")


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


def build_manifest(manifest: dict, folder: Path) -> dict:
    """The given manifest plus its `build_id` and a `files` section of `folder`.

    The build id is the sha256 of the canonical JSON of what was asked for (config, input
    hashes, toolchain), not of the files: two builds of the same request share an id, and
    `verify-folder` can then tell files of this build from files of another.
    """
    clashes = [key for key in MANIFEST_KEYS_WE_WRITE if key in manifest]
    if clashes:
        raise PipelineError(f"manifest keys {clashes}: written by assemble_folder; drop them from the manifest")
    files = {
        relative_path: {"sha256": checksums.file_sha256(path), "size": path.stat().st_size}
        for relative_path, path in checksums.folder_files(folder)
        if relative_path != MANIFEST_NAME
    }
    return {**manifest, "build_id": build_id(manifest), "files": files}


def build_id(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON, leaving out what assemble_folder writes."""
    request = {key: value for key, value in manifest.items() if key not in MANIFEST_KEYS_WE_WRITE}
    return hashlib.sha256(canonical_json(request).encode("utf-8")).hexdigest()


def canonical_json(value) -> str:
    """JSON with sorted keys and no whitespace: the form the build id is taken over."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise PipelineError(f"manifest: {error}; pass only strings, numbers, lists and dicts") from None


def read_manifest(folder: Path) -> dict:
    """A built folder's `manifest.json`: one line naming the file where it is missing or unreadable."""
    path = Path(folder) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; copy or rebuild the whole folder") from None
    except ValueError as error:
        raise PipelineError(f"{path}: not JSON ({error}); copy or rebuild the whole folder") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise PipelineError(f"{path}: no 'files' section; copy or rebuild the whole folder")
    return manifest


def write_manifest(manifest: dict, folder: Path) -> Path:
    """Write `folder/manifest.json` deterministically (sorted keys, indent 2, final newline)."""
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8", newline="\n")
    return path


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


def _copy_entry(name: str, source: Path, target: Path) -> None:
    try:
        # A link named in the entries is the caller's choice (e.g. a shared tokenizer);
        # links inside a package are still refused by the listing.
        copy_content(source.resolve(), target)
    except OSError as error:
        raise PipelineError(
            f"entry {name!r}: copying {source} failed ({error}); free space or fix permissions and rerun"
        ) from None


def load_spec(spec_path: Path) -> tuple[dict[str, Path], dict, dict[str, Path]]:
    """Read an assemble spec `{"entries": {name: path}, "manifest": {...}, "packages": {name: path}}`.

    `packages` names the `.mlpackage` each compiled entry was made from (app folders), so
    the folder's interfaces can be read; a packages folder's entries are their own.
    """
    try:
        text = sys.stdin.read() if str(spec_path) == "-" else Path(spec_path).read_text(encoding="utf-8")
        spec = json.loads(text)
    except (OSError, ValueError) as error:
        raise PipelineError(f"{spec_path}: cannot read the assemble spec ({error}); write it as JSON") from None
    entries = spec.get("entries") if isinstance(spec, dict) else None
    manifest = spec.get("manifest", {}) if isinstance(spec, dict) else None
    if not isinstance(entries, dict) or not all(isinstance(path, str) for path in entries.values()):
        raise PipelineError(f"{spec_path}: key 'entries' must map folder names to source paths")
    if not isinstance(manifest, dict):
        raise PipelineError(f"{spec_path}: key 'manifest' must be a JSON object")
    packages = spec.get("packages") or {name: path for name, path in entries.items() if name.endswith(".mlpackage")}
    as_paths = {name: Path(path) for name, path in entries.items()}
    return as_paths, manifest, {name: Path(path) for name, path in packages.items()}


def app_record(packages: dict[str, Path]) -> dict:
    """Whether the client app can load the folder made of these packages (client.py), from their interfaces."""
    from google.protobuf.message import DecodeError

    from sd3coreml.convert.package import package_interface
    from sd3coreml.release.client import loadable_record

    interfaces, unreadable = {}, []
    for name, path in sorted(packages.items()):
        try:
            interfaces[Path(name).stem] = package_interface(path)
        except (OSError, DecodeError):
            unreadable.append(f"{Path(name).stem} is no readable Core ML package")
    record = loadable_record(interfaces)
    if unreadable:
        record = {"app_loadable": False, "app_problems": unreadable + record.get("app_problems", [])}
    return record


def hash_inputs(manifest: dict) -> dict:
    """Replace `input_files` {label: path} by their sha256 under `inputs`, so no host path reaches a folder."""
    files = manifest.pop("input_files", {})
    hashes = {label: checksums.tree_sha256(Path(path)) for label, path in files.items()}
    return {**manifest, "inputs": {**manifest.get("inputs", {}), **hashes}}


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
