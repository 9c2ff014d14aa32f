"""Content hashes of files and folders, and the `SHA256SUMS` file of a resource folder.

Snakemake judges a `directory()` output only by the hidden `.snakemake_timestamp` it
writes inside, and `ensure(sha256=)` does not work on folders, so the hashes of
`.mlpackage` and `.mlmodelc` folders are computed here: sorted relative POSIX paths plus
the sha256 of each file, with that marker left out wherever it appears.

`SHA256SUMS` is written in the exact format `sha256sum -c SHA256SUMS` reads
(`<hex>  <relative/path>`, one line per file, sorted by path), so a user can check a
folder with coreutils alone.
"""

import hashlib
import os
import stat
from pathlib import Path

from sd3coreml.errors import PipelineError

SNAKEMAKE_MARKER = ".snakemake_timestamp"
SUMS_NAME = "SHA256SUMS"
# What macOS writes into folders: Finder's `.DS_Store` in any folder a user opens, `._*`
# AppleDouble files on copies to exFAT or SMB. No folder check counts them, no folder gets them.
FINDER_FILE = ".DS_Store"
APPLE_DOUBLE_PREFIX = "._"
CHUNK_BYTES = 1 << 20


def file_sha256(path: Path) -> str:
    """Hex sha256 of one file's bytes, read in chunks so multi-GB weights fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def list_tree_files(root: Path) -> list[tuple[str, Path]]:
    """Every regular file under `root` as (relative POSIX path, path), sorted by path.

    `.snakemake_timestamp` markers are left out at any depth. Symlinks and special files
    are refused: a hash or a copy that followed them would describe something outside
    the folder.
    """
    root = Path(root)
    _refuse_non_regular(root, root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            _refuse_non_regular(Path(dirpath, name), root)
        for name in filenames:
            if name == SNAKEMAKE_MARKER:
                continue
            path = Path(dirpath, name)
            found.append((path.relative_to(root).as_posix(), path))
    # Code point order of str equals byte order of its UTF-8 encoding, which is what
    # `sort` in the C locale and the contract's "sorted paths" mean.
    return sorted(found)


def _refuse_non_regular(path: Path, root: Path) -> None:
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        raise PipelineError(
            f"{path}: symlink inside {root}; content hashes and copies take regular files "
            "only: replace the link with the file it points to"
        )
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise PipelineError(f"{path}: not a regular file or folder; remove it from {root}")


def tree_sha256(path: Path) -> str:
    """Content hash of a file (its plain sha256) or of a folder.

    A folder's hash is the sha256 of its `sha256sum`-style listing, so it changes with any
    file's bytes or name and ignores `.snakemake_timestamp`, mtimes and permissions.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise PipelineError(f"{path}: does not exist; build it before hashing it")
    _refuse_non_regular(path, path.parent)
    if path.is_file():
        return file_sha256(path)
    listing = "".join(sums_line(sha, rel) for rel, sha in _hash_files(list_tree_files(path)))
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def _hash_files(files: list[tuple[str, Path]]) -> list[tuple[str, str]]:
    return [(rel, file_sha256(path)) for rel, path in files]


def sums_line(sha: str, relative_path: str) -> str:
    """One `sha256sum` line; names `sha256sum` would escape are refused instead."""
    if any(char in relative_path for char in "\\\n\r"):
        raise PipelineError(
            f"{relative_path!r}: backslash or line break in a file name; "
            "rename it so SHA256SUMS stays plain `sha256sum -c` input"
        )
    return f"{sha}  {relative_path}\n"


def is_finder_file(relative_path: str) -> bool:
    """Whether macOS, not a build, put this file there (at any depth)."""
    return any(part == FINDER_FILE or part.startswith(APPLE_DOUBLE_PREFIX) for part in relative_path.split("/"))


def folder_files(folder: Path) -> list[tuple[str, Path]]:
    """Files a folder's SHA256SUMS covers: all but SHA256SUMS itself and what Finder wrote."""
    return [(rel, path) for rel, path in list_tree_files(folder) if rel != SUMS_NAME and not is_finder_file(rel)]


def write_sha256sums(folder: Path) -> Path:
    """Write `folder/SHA256SUMS` covering every file in the folder, and return its path.

    `manifest.json` is covered when present, so write it first.
    """
    folder = Path(folder)
    lines = [sums_line(sha, rel) for rel, sha in _hash_files(folder_files(folder))]
    sums_path = folder / SUMS_NAME
    partial = folder / f".{SUMS_NAME}.partial"
    partial.write_text("".join(lines), encoding="utf-8", newline="\n")
    os.replace(partial, sums_path)
    return sums_path


def read_sha256sums(sums_path: Path) -> dict[str, str]:
    """Parse a SHA256SUMS file into {relative path: hex}; PipelineError on a bad line."""
    listed = {}
    for number, line in enumerate(sums_path.read_text(encoding="utf-8").splitlines(), 1):
        sha, separator, relative_path = line.partition("  ")
        if not separator or len(sha) != 64 or not relative_path:
            raise PipelineError(
                f"{sums_path}:{number}: not a `<sha256>  <path>` line; "
                "regenerate the folder's SHA256SUMS by rebuilding it"
            )
        listed[relative_path] = sha.lower()
    return listed


def folder_hashes(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file a folder's SHA256SUMS covers."""
    return dict(_hash_files(folder_files(folder)))


def check_sha256sums(folder: Path, hashes: dict[str, str] | None = None) -> list[str]:
    """Problems of a folder against its SHA256SUMS, one string each, empty when clean.

    Each problem reads `missing: X`, `modified: X` or `extra: X` (a file on disk that
    SHA256SUMS does not list; the app would see it too). `hashes` (from `folder_hashes`)
    saves hashing the folder again when the caller needs them too.
    """
    folder = Path(folder)
    sums_path = folder / SUMS_NAME
    if not sums_path.is_file():
        return [f"missing: {SUMS_NAME}"]
    listed = read_sha256sums(sums_path)
    on_disk = folder_hashes(folder) if hashes is None else hashes
    problems = []
    for relative_path, sha in sorted(listed.items()):
        if relative_path not in on_disk:
            problems.append(f"missing: {relative_path}")
        elif on_disk[relative_path] != sha:
            problems.append(f"modified: {relative_path}")
    problems.extend(f"extra: {rel}" for rel in sorted(on_disk) if rel not in listed)
    return problems


def tree_bytes(path: Path, allocated: bool = False) -> int:
    """Bytes of a file or of a folder's files: their sizes, or (`allocated`) the disk blocks they take."""
    path = Path(path)
    files = (
        [path] if not path.is_dir() else [child for child in path.rglob("*") if child.is_file() or child.is_symlink()]
    )
    stats = [file.lstat() for file in files]
    return sum(stat_.st_blocks * 512 if allocated else stat_.st_size for stat_ in stats)
