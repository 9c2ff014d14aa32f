"""Check a resource folder against its `SHA256SUMS` and `manifest.json` (`verify-folder`).

The app runs whatever `MultiModalDiffusionTransformerStage<int>` it finds, so a folder must
hold exactly one build's files. Each problem is one line that starts with what is wrong:

- `missing`: listed by SHA256SUMS or manifest.json, not on disk;
- `modified`: on disk with other bytes than SHA256SUMS lists;
- `extra`: on disk, listed nowhere;
- `stale`: listed by SHA256SUMS but not by the manifest, a stage beyond the manifest's
  layout, or a manifest whose build id does not match its own contents;
- `foreign`: matches SHA256SUMS but not the manifest (SHA256SUMS was regenerated over a
  file from another build), a stage package holding other blocks than its place needs, or a
  `MultiModalDiffusionTransformerAdaLN*` model, which switches the app to a stage interface
  this pipeline does not build.

A folder the app cannot load for its sizes (the demo's) is no problem of the folder: a note
says so, from its manifest.
"""

from pathlib import Path

from sd3coreml import checksums
from sd3coreml.contract import ADALN_FILE
from sd3coreml.convert.package import ARTIFACT_KEY, block_range_label, read_spec
from sd3coreml.errors import PipelineError
from sd3coreml.release import folder
from sd3coreml.release.manifest import MANIFEST_NAME, ManifestError, build_id
from sd3coreml.release.manifest import read_manifest as read_manifest_file


def folder_problems(folder_path: Path) -> list[str]:
    """Every problem of a folder, one line each, in a stable order; empty when it is clean."""
    folder_path = Path(folder_path)
    if not folder_path.is_dir():
        raise PipelineError(f"{folder_path}: no such folder; name a built resource folder")
    # Hashed once: both SHA256SUMS and the manifest are checked against these.
    on_disk = checksums.folder_hashes(folder_path)
    problems = checksums.check_sha256sums(folder_path, on_disk)
    manifest = read_manifest(folder_path, problems)
    if manifest is not None:
        problems += manifest_problems(folder_path, manifest, on_disk)
        problems += layout_problems(folder_path, manifest)
    problems += [
        f"foreign: {entry.name} (the app would then feed its stages without modulation_inputs; remove it)"
        for entry in sorted(folder_path.iterdir())
        if ADALN_FILE.fullmatch(entry.name)
    ]
    return list(dict.fromkeys(problems))


def app_note(folder_path: Path) -> str | None:
    """Why the app cannot load the folder, as its manifest records it; None when it can."""
    try:
        manifest = read_manifest_file(folder_path)
    except PipelineError:
        return None
    if not isinstance(manifest, dict) or manifest.get("app_loadable", True):
        return None
    return f"note: the app ({manifest['client']['repo']} {manifest['client']['commit'][:7]}) cannot load it: " + (
        "; ".join(manifest.get("app_problems", []))
    )


def read_manifest(folder_path: Path, problems: list[str]) -> dict | None:
    """The folder's manifest, or None with its problem appended (`missing`, `modified`)."""
    if not (folder_path / MANIFEST_NAME).is_file():
        problems.append(f"missing: {MANIFEST_NAME}")
        return None
    try:
        return read_manifest_file(folder_path)
    except ManifestError as error:
        problems.append(f"modified: {MANIFEST_NAME} ({error.why.split(' (')[0]})")
        return None


def manifest_problems(folder_path: Path, manifest: dict, on_disk: dict[str, str]) -> list[str]:
    """The files on disk ({path: sha256}) and in SHA256SUMS against the manifest's own record of them."""
    problems = []
    if manifest.get("build_id") != build_id(manifest):
        problems.append(f"stale: {MANIFEST_NAME} (its build_id does not match its contents)")
    recorded = {path: entry.get("sha256") for path, entry in manifest["files"].items()}
    sums_path = folder_path / checksums.SUMS_NAME
    listed = checksums.read_sha256sums(sums_path) if sums_path.is_file() else {}
    listed.pop(MANIFEST_NAME, None)
    on_disk = {path: sha for path, sha in on_disk.items() if path != MANIFEST_NAME}
    for path in sorted(set(recorded) - set(on_disk)):
        problems.append(f"missing: {path}")
    for path in sorted(set(listed) - set(recorded)):
        problems.append(f"stale: {path} (in SHA256SUMS but not in manifest.json: left from another build)")
    for path in sorted(set(recorded) & set(on_disk)):
        sha = on_disk[path]
        if sha != recorded[path] and sha == listed.get(path):
            problems.append(f"foreign: {path} (matches SHA256SUMS but not manifest.json: from another build)")
    return problems


def layout_problems(folder_path: Path, manifest: dict) -> list[str]:
    """Stages against the layout the manifest records: none beyond it, each holding its blocks."""
    # An app folder made by the hand-off keeps its packages folder's manifest under `packages`.
    config = manifest.get("config") or manifest.get("packages", {}).get("config", {})
    ranges = config.get("stage_block_ranges")
    if ranges is None:
        return []
    last = len(ranges)
    problems = []
    for entry in sorted(folder_path.iterdir()):
        match = folder.STAGE_NAME.fullmatch(entry.name)
        if match is None:
            continue
        index = int(match.group(1))
        if index > last:
            problems.append(f"stale: {entry.name} (the layout in manifest.json is Stage0..Stage{last})")
        elif index > 0 and entry.suffix == ".mlpackage":
            problems += block_range_problems(entry, *ranges[index - 1])
    return problems


def block_range_problems(package: Path, start: int, end: int) -> list[str]:
    held = package_artifact(package)
    wanted = block_range_label(start, end)
    if held is not None and held != wanted:
        return [f"foreign: {package.name} (holds {held}; its place in the layout needs {wanted})"]
    return []


def package_artifact(package: Path) -> str | None:
    """The ARTIFACT_KEY metadata a package was saved with, or None if unreadable."""
    from google.protobuf.message import DecodeError

    try:
        spec = read_spec(package)
    except (OSError, DecodeError):
        return None
    return spec.description.metadata.userDefined.get(ARTIFACT_KEY)
