"""Write outputs under a temporary name and move them into place.

An interrupted job then leaves at most a hidden `.NAME.tmp-PID` sibling, never a half
artifact that looks finished, and an existing artifact is replaced only once the new one
is complete.
"""

import os
import shutil
from contextlib import contextmanager
from pathlib import Path


def temporary_sibling(path: Path) -> Path:
    """A hidden sibling that keeps the suffix (coremltools insists on `.mlpackage`)."""
    path = Path(path)
    return path.parent / f".{path.stem}.tmp-{os.getpid()}{path.suffix}"


def remove_path(path: Path) -> None:
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace_path(new: Path, target: Path) -> None:
    """Put `new` at `target`, replacing whatever was there, with no moment of a mixed state.

    The old one is renamed aside first and deleted only once the new one is in place;
    if the second rename fails the old one is put back.
    """
    new, target = Path(new), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    aside = target.parent / f".{target.name}.old-{os.getpid()}"
    remove_path(aside)
    had_old = target.exists() or target.is_symlink()
    if had_old:
        os.rename(target, aside)
    try:
        os.rename(new, target)
    except BaseException:
        if had_old:
            os.rename(aside, target)
        raise
    remove_path(aside)


@contextmanager
def written_atomically(path: Path):
    """Yield a temporary sibling to write (a file or a folder); move it into place on success."""
    path = Path(path)
    temporary = temporary_sibling(path)
    remove_path(temporary)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield temporary
        replace_path(temporary, path)
    finally:
        remove_path(temporary)
