"""Pinned downloads from the Hugging Face Hub: single files and folder snapshots.

Every file is pinned by a commit (`revision`) and a sha256, checked after download; a file
whose hash differs is refused and deleted. Files come through huggingface_hub's own cache,
so `HF_HUB_OFFLINE=1` works from a filled cache, and the token comes from its own
environment and login (`HF_TOKEN`, `hf auth login`): this module never reads or prints it.
Placed files are hard links into that cache where possible (the weights are GBs), copies
otherwise, written under a temporary name and moved into place.
"""

import json
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sd3coreml.atomic import written_atomically
from sd3coreml.checksums import file_sha256
from sd3coreml.errors import PipelineError

COMMIT = re.compile(r"[0-9a-f]{40}")
SHA256 = re.compile(r"[0-9a-fA-F]{64}")
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
# allow_patterns are fnmatch patterns: a pinned path must match only itself.
GLOB_CHARACTERS = set("*?[]")


def check_repo(repo: str, key: str) -> None:
    if not REPO_ID.fullmatch(repo):
        raise PipelineError(f"{key} is {repo!r}, not a Hugging Face repo id; write OWNER/NAME")


def check_revision(revision: str, key: str) -> None:
    if not COMMIT.fullmatch(revision):
        raise PipelineError(
            f"{key} is {revision!r}, not a full commit hash: a branch or tag moves, so it is no pin; "
            "write the 40-hex commit from the repo's history on huggingface.co"
        )


def check_sha256(sha256: str, key: str) -> None:
    if not SHA256.fullmatch(sha256):
        raise PipelineError(f"{key} is {sha256!r}, not a sha256; write its 64 hex digits")


def check_repo_path(path: str, key: str) -> None:
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or path.endswith("/") or ".." in parts or GLOB_CHARACTERS & set(path):
        raise PipelineError(f"{key} is {path!r}; write a relative file path inside the repo, without '..' or * ? [ ]")


def check_pinned_files(pinned_files: dict[str, str], key: str) -> None:
    if not pinned_files:
        raise PipelineError(f"{key} pins no files; list each file to download with its sha256")
    for path, sha256 in pinned_files.items():
        check_repo_path(path, f"{key} path")
        check_sha256(sha256, f"{key} '{path}'")


@contextmanager
def hub_errors(repo: str, revision: str, what: str):
    """Turn huggingface_hub's errors into one-line PipelineErrors; `what` names the wanted file(s)."""
    from huggingface_hub import errors

    try:
        yield
    except errors.GatedRepoError as error:
        raise PipelineError(gated_message(repo)) from error
    except errors.RepositoryNotFoundError as error:
        raise PipelineError(
            f"{repo}: no such repo on the Hub, or it is private: check the repo id in config 'downloads' "
            "and log in with an account that can see it (`hf auth login`)"
        ) from error
    except errors.RevisionNotFoundError as error:
        raise PipelineError(
            f"{repo} has no commit {revision}; check the revision pinned in config 'downloads'"
        ) from error
    except errors.RemoteEntryNotFoundError as error:
        raise PipelineError(f"{repo}@{revision} has no {what}; check the path pinned in config 'downloads'") from error
    except errors.HfHubHTTPError as error:
        raise PipelineError(http_message(repo, error.response.status_code)) from error
    except errors.LocalEntryNotFoundError as error:
        raise PipelineError(
            f"{repo}@{revision}: {what} is not in the Hugging Face cache and the Hub cannot be reached "
            "(HF_HUB_OFFLINE=1, or no connection); rerun with network access, or place the file yourself"
        ) from error


def gated_message(repo: str) -> str:
    return (
        f"{repo} is gated and this account has no access: accept the license on "
        f"https://huggingface.co/{repo} and log in (`hf auth login`), then rerun"
    )


def http_message(repo: str, status: int) -> str:
    # The Hub answers 401 without a login and 403 without an accepted license.
    if status in (401, 403):
        return gated_message(repo)
    return f"{repo}: the Hub answered HTTP {status}; retry later, or use a filled cache with HF_HUB_OFFLINE=1"


def place_verified(source: Path, target: Path, sha256: str, origin: str) -> None:
    """Hard-link (or copy) `source` to `target` and check its sha256; delete it if it differs."""
    target.parent.mkdir(parents=True, exist_ok=True)
    blob = os.path.realpath(source)
    try:
        os.link(blob, target)
    except OSError:
        # Another filesystem than the cache, or links not allowed: copy instead.
        shutil.copyfile(blob, target)
    actual = file_sha256(target)
    if actual != sha256.lower():
        target.unlink()
        raise PipelineError(
            f"{origin}: sha256 is {actual}, expected {sha256.lower()}; refused and deleted: fix the pin "
            f"in config 'downloads', or if the pin is right remove the damaged cached copy ({blob}) and rerun"
        )


def download_file(repo: str, filename: str, revision: str, sha256: str, out: Path) -> Path:
    """Download `filename` of `repo` at commit `revision` to `out`, verified against `sha256`."""
    check_repo(repo, "repo")
    check_revision(revision, f"revision of {repo}")
    check_repo_path(filename, f"filename in {repo}")
    check_sha256(sha256, f"sha256 of {filename}")
    from huggingface_hub import hf_hub_download

    with hub_errors(repo, revision, filename):
        cached = Path(hf_hub_download(repo, filename, revision=revision))
    out = Path(out)
    with written_atomically(out) as temporary:
        place_verified(cached, temporary, sha256, f"{out} ({repo}@{revision}:{filename})")
    return out


def download_snapshot(repo: str, revision: str, pinned_files: dict[str, str], out_dir: Path) -> Path:
    """Download exactly the pinned files of `repo` at commit `revision` into `out_dir`, each verified."""
    check_repo(repo, "repo")
    check_revision(revision, f"revision of {repo}")
    check_pinned_files(pinned_files, f"pins of {repo}")
    from huggingface_hub import snapshot_download

    with hub_errors(repo, revision, f"{len(pinned_files)} pinned files"):
        snapshot = Path(snapshot_download(repo, revision=revision, allow_patterns=sorted(pinned_files)))
    out_dir = Path(out_dir)
    with written_atomically(out_dir) as temporary:
        temporary.mkdir()
        for path, sha256 in sorted(pinned_files.items()):
            source = snapshot / path
            if not source.is_file():
                raise PipelineError(
                    f"{repo}@{revision}: {path} is not in the snapshot (not in the repo at that commit, "
                    "or not cached while offline); check the path pinned in config 'downloads'"
                )
            place_verified(source, temporary / path, sha256, f"{out_dir / path} ({repo}@{revision}:{path})")
    return out_dir


@dataclass(frozen=True)
class PlannedDownload:
    """One download rule: its name, its output, and the pin its params carry."""

    rule: str
    name: str
    out: str
    # repo, revision and the hashes: a file's filename and sha256, a snapshot's files as JSON.
    # One dict, because snakemake --lint mistakes a repo path equal to the output for a path prefix.
    pin: dict


def planned_downloads(config: dict) -> tuple[list[PlannedDownload], list[PlannedDownload]]:
    """(single files, snapshots) of config 'downloads', checked; both empty when it is absent."""
    downloads = config.get("downloads") or {}
    root = str(downloads.get("root", "checkpoints")).rstrip("/")
    files = [planned_file(root, name, pin) for name, pin in (downloads.get("files") or {}).items()]
    snapshots = [planned_snapshot(root, name, pin) for name, pin in (downloads.get("snapshots") or {}).items()]
    check_unique(files + snapshots)
    return files, snapshots


def planned_file(root: str, name: str, pin: dict) -> PlannedDownload:
    key = f"config key 'downloads.files.{name}"
    check_repo(pin["repo"], f"{key}.repo'")
    check_revision(pin["revision"], f"{key}.revision'")
    check_repo_path(pin["filename"], f"{key}.filename'")
    check_sha256(pin["sha256"], f"{key}.sha256'")
    params = {field: pin[field] for field in ("repo", "filename", "revision")} | {"sha256": pin["sha256"].lower()}
    return PlannedDownload(rule_name("download_file", name), name, f"{root}/{name}", params)


def planned_snapshot(root: str, name: str, pin: dict) -> PlannedDownload:
    key = f"config key 'downloads.snapshots.{name}"
    check_repo(pin["repo"], f"{key}.repo'")
    check_revision(pin["revision"], f"{key}.revision'")
    check_pinned_files(pin["files"], f"{key}.files'")
    files = json.dumps({path: sha.lower() for path, sha in pin["files"].items()}, sort_keys=True)
    params = {"repo": pin["repo"], "revision": pin["revision"], "files": files}
    return PlannedDownload(rule_name("download_snapshot", name), name, f"{root}/{name}", params)


def rule_name(prefix: str, name: str) -> str:
    return f"{prefix}_{re.sub(r'[^0-9A-Za-z_]', '_', name)}"


def check_unique(planned: list[PlannedDownload]) -> None:
    seen = {}
    for download in planned:
        for value in (download.rule, download.out):
            if value in seen:
                raise PipelineError(
                    f"config key 'downloads': {download.name!r} and {seen[value]!r} would share {value}; rename one"
                )
            seen[value] = download.name


def downloaded_paths(config: dict) -> set[Path]:
    """Paths the download rules will place: the plan need not find them on disk yet."""
    files, snapshots = planned_downloads(config)
    return {Path(download.out) for download in files + snapshots}
