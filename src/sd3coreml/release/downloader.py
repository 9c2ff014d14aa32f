"""Will a new release reach the phones whole? The app's downloader, against two releases.

MobileDiffuser's `ModelResourceManager.swift` (bfe2f28) lists a folder of the model repository
(`/api/models/<repo>/tree/main/<folder>?recursive=1`), skips every file that already exists on
the phone with the listed size, and never deletes one. A release published over an older one
therefore:

- leaves every file the new release dropped on the phone (a removed `Stage7` stays, and the
  app, which runs every `Stage<int>` it finds, runs it);
- never fetches a changed file whose size did not change (int8 weights of one layout keep
  their size), so the phone mixes two builds inside one model.

OLD is what phones hold: a folder, its `manifest.json`, or a saved Hub tree listing (`size` is
what the app compares; `lfs.oid` is the sha256 of an LFS file, `oid` the git blob id of a
small one). NEW is a built packages or app folder.
"""

import hashlib
import json
from pathlib import Path

from sd3coreml import checksums
from sd3coreml.errors import PipelineError

ADVICE = (
    "keep a folder's layout across releases (the app deletes nothing), and know that a changed file of "
    "unchanged size reaches phones only when users reinstall the app"
)


def ignored(relative_path: str) -> bool:
    return checksums.is_finder_file(relative_path) or relative_path.split("/")[-1] == checksums.SNAKEMAKE_MARKER


def git_blob_id(data: bytes) -> str:
    """The id the Hub lists as `oid` for a file kept in git (not LFS)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def folder_files(folder: Path) -> dict[str, dict]:
    """{relative path: {size, sha256, git_oid}} of a folder's files, Finder's left out."""
    files = {}
    for path in sorted(Path(folder).rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and not ignored(relative):
            data = path.read_bytes()
            files[relative] = {
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "git_oid": git_blob_id(data),
            }
    return files


def listed_files(path: Path) -> dict[str, dict]:
    """OLD as the phones hold it: {relative path: {size, and sha256 or git_oid where known}}."""
    path = Path(path)
    if path.is_dir():
        return folder_files(path)
    try:
        listing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PipelineError(f"{path}: not a folder, a manifest.json or a Hub tree listing ({error})") from None
    if isinstance(listing, dict) and isinstance(listing.get("files"), dict):
        files = {name: {"size": entry["size"], "sha256": entry["sha256"]} for name, entry in listing["files"].items()}
        # The manifest lists everything but itself and SHA256SUMS, which every release rewrites.
        return files
    if isinstance(listing, list):
        return hub_files(listing, path)
    raise PipelineError(f"{path}: neither a manifest.json ('files') nor a Hub tree listing (a JSON list)")


def hub_files(listing: list, path: Path) -> dict[str, dict]:
    """A Hub tree listing of one folder: paths are repo paths, `<folder>/...`."""
    files = {}
    for entry in listing:
        if not isinstance(entry, dict) or entry.get("type") != "file":
            continue
        relative = entry["path"].split("/", 1)[-1]
        if ignored(relative):
            continue
        lfs = entry.get("lfs") or {}
        files[relative] = {"size": entry.get("size")}
        files[relative].update({"sha256": lfs["oid"]} if "oid" in lfs else {"git_oid": entry.get("oid")})
    if not files:
        raise PipelineError(
            f"{path}: the Hub tree listing holds no files; save /api/models/<repo>/tree/main/<folder>?recursive=1"
        )
    return files


def same_content(old: dict, new: dict) -> bool | None:
    """Whether two listed files hold the same bytes; None where OLD does not say."""
    for key in ("sha256", "git_oid"):
        if old.get(key):
            return old[key] == new[key]
    return None


def release_hazards(old: dict[str, dict], new: dict[str, dict]) -> list[str]:
    """One line per file the app's downloader would get wrong, going from OLD to NEW."""
    hazards = [
        f"left behind: {name} (dropped by the new release; the app keeps it{', and runs it' if 'Stage' in name else ''})"
        for name in sorted(set(old) - set(new))
    ]
    for name in sorted(set(old) & set(new)):
        if old[name].get("size") == new[name]["size"] and same_content(old[name], new[name]) is False:
            hazards.append(
                f"skipped for its size: {name} (changed, same {new[name]['size']} bytes; the app keeps the old one)"
            )
    return hazards
