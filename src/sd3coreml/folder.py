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
import re
import shutil
import sys
from pathlib import Path

from sd3coreml import checksums
from sd3coreml.atomic import remove_path, replace_path, temporary_sibling
from sd3coreml.errors import PipelineError

MANIFEST_NAME = "manifest.json"
STAGE_PREFIX = "MultiModalDiffusionTransformerStage"
MODEL_SUFFIXES = (".mlpackage", ".mlmodelc")
# Leading zeros are refused: `Stage01` would sort as 1 in the app but is no contract name.
STAGE_NAME = re.compile(rf"{STAGE_PREFIX}(0|[1-9][0-9]*)(\.mlpackage|\.mlmodelc)")
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
    """The given manifest plus a `files` section of `folder` and a `build_id` over both.

    The build id is the sha256 of the canonical JSON of everything else in the manifest,
    so the same inputs and the same files give the same id on any machine.
    """
    clashes = [key for key in MANIFEST_KEYS_WE_WRITE if key in manifest]
    if clashes:
        raise PipelineError(f"manifest keys {clashes}: written by assemble_folder; drop them from the manifest")
    files = {
        relative_path: {"sha256": checksums.file_sha256(path), "size": path.stat().st_size}
        for relative_path, path in checksums.folder_files(folder)
        if relative_path != MANIFEST_NAME
    }
    body = {**manifest, "files": files}
    return {**body, "build_id": hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()}


def canonical_json(value) -> str:
    """JSON with sorted keys and no whitespace: the form the build id is taken over."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise PipelineError(f"manifest: {error}; pass only strings, numbers, lists and dicts") from None


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
    staging = temporary_sibling(out_dir)
    remove_path(staging)
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


def load_spec(spec_path: Path) -> tuple[dict[str, Path], dict]:
    """Read an assemble spec `{"entries": {name: path}, "manifest": {...}}`."""
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
    return {name: Path(path) for name, path in entries.items()}, manifest


def hash_inputs(manifest: dict) -> dict:
    """Replace `input_files` {label: path} by their sha256 under `inputs`, so no host path reaches a folder."""
    files = manifest.pop("input_files", {})
    hashes = {label: checksums.tree_sha256(Path(path)) for label, path in files.items()}
    return {**manifest, "inputs": {**manifest.get("inputs", {}), **hashes}}


def run_assemble_folder(args) -> None:
    entries, manifest = load_spec(args.spec)
    assemble_folder(entries, args.out, hash_inputs(manifest))


def run_verify_folder(args) -> None:
    problems = checksums.check_sha256sums(args.folder)
    for problem in problems:
        print(problem)
    if problems:
        sys.stdout.flush()
        raise PipelineError(f"{args.folder}: {len(problems)} problem(s) against its SHA256SUMS; rebuild the folder")


def register_cli(subparsers) -> None:
    assemble = subparsers.add_parser(
        "assemble-folder", help="build a resource folder from a JSON spec, replacing the old one whole"
    )
    assemble.add_argument(
        "--spec",
        type=Path,
        required=True,
        help='JSON file or - for stdin: {"entries": {name: path}, "manifest": {..., "input_files": {label: path}}}',
    )
    assemble.add_argument("--out", type=Path, required=True, help="the folder to (re)build")
    assemble.set_defaults(func=run_assemble_folder)

    verify = subparsers.add_parser(
        "verify-folder", help="check a folder against its SHA256SUMS; exit 1 listing each problem"
    )
    verify.add_argument("folder", type=Path)
    verify.set_defaults(func=run_verify_folder)
