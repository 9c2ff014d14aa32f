"""The demo's session build, made once per test run and shared by every pytest-xdist worker.

The first worker that asks for it builds it, holding a file lock in the run's temporary root
(the folder above each worker's own); a worker that asks later waits for the lock and reads the
record the builder left: the build's folder, what the builder's job server served, and a
fingerprint of every file (path, size, modification time). The build is read-only from then
on: a test reads it or copies it (harness.copy_of_build). Each worker compares the fingerprint
at the end of its session, so a test that writes into it fails the run instead of racing
another worker's copy.
"""

import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from sd3coreml.atomic import write_json

RECORD, FAILURE, LOCK = "demo-build.json", "demo-build.failed", "demo-build.lock"
MANIFEST = "Manifest.json"


def shared_root(tmp_path_factory) -> Path:
    """The run's temporary root: one for all of pytest-xdist's workers, whose own roots lie in it."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def fingerprint(folder: Path) -> dict[str, list]:
    """{relative path: [size, modification time in ns]} of every file and symbolic link; a package's
    Manifest.json by its bytes, as coremltools rewrites it (same bytes, new file) wherever it opens one."""
    return {path.relative_to(folder).as_posix(): state(path) for path in sorted(folder.rglob("*"))
            if path.is_file() or path.is_symlink()}  # fmt: skip


def state(path: Path) -> list:
    if path.name == MANIFEST and path.parent.suffix == ".mlpackage":
        return [hashlib.sha256(path.read_bytes()).hexdigest()]
    status = path.lstat()
    return [status.st_size, status.st_mtime_ns]


@contextmanager
def locked(path: Path):
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def shared_build(root: Path, folder: Path, build: Callable[[Path], dict]) -> dict:
    """The run's build record, after `build(folder)` (which returns more to record) if no worker made it yet."""
    record, failure = root / RECORD, root / FAILURE
    with locked(root / LOCK):
        if record.exists():
            return json.loads(record.read_text())
        if failure.exists():
            raise AssertionError(f"the session build failed in another worker:\n{failure.read_text()}")
        try:
            made = {**build(folder), "folder": str(folder)}
        except BaseException as error:
            failure.write_text(f"{type(error).__name__}: {error}"[-6000:])
            raise
        made["fingerprint"] = fingerprint(folder)
        write_json(record, made)
        return made


def assert_unchanged(record: dict) -> None:
    now, then = fingerprint(Path(record["folder"])), record["fingerprint"]
    changed = sorted(path for path in now.keys() | then.keys() if now.get(path) != then.get(path))
    if changed:
        raise AssertionError(
            f"a test wrote into the shared session build {record['folder']} ({', '.join(changed[:5])}):"
            " copy it first (harness.copy_of_build)"
        )
