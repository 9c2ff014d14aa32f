"""Write outputs under a temporary name and move them into place.

An interrupted job then leaves at most a hidden `.NAME.tmp-PID` sibling, never a half
artifact that looks finished, and an existing artifact is replaced only once the new one
is complete. The next write of the same artifact removes what a killed process left.
"""

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

# The two sibling names below: `.STEM.tmp-PID.SUFFIX` (being written) and `.NAME.old-PID` (set aside).
SIBLING_NAME = re.compile(r"\.(?P<stem>.+)\.tmp-(?P<tmp_pid>\d+)(?P<suffix>.*)|\.(?P<name>.+)\.old-(?P<old_pid>\d+)")


def sibling_of(name: str) -> tuple[str, int] | None:
    """(artifact name, writer PID) of a temporary or set-aside sibling's name, else None."""
    match = SIBLING_NAME.fullmatch(name)
    if match is None:
        return None
    if match["name"] is not None:
        return match["name"], int(match["old_pid"])
    return match["stem"] + match["suffix"], int(match["tmp_pid"])


def temporary_sibling(path: Path) -> Path:
    """A hidden sibling that keeps the suffix (coremltools insists on `.mlpackage`)."""
    path = Path(path)
    return path.parent / f".{path.stem}.tmp-{os.getpid()}{path.suffix}"


def fresh_temporary(path: Path) -> Path:
    """This process's temporary sibling of `path`, with leftovers of dead writers removed."""
    path = Path(path)
    remove_leftovers(path)
    temporary = temporary_sibling(path)
    remove_path(temporary)
    return temporary


def remove_leftovers(path: Path) -> None:
    """Remove the `.tmp-PID`/`.old-PID` siblings of `path` whose process no longer runs.

    A SIGKILLed job cannot clean up after itself; a live PID's sibling is left alone, since
    another process may be writing it right now.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return
    for sibling in path.parent.iterdir():
        found = sibling_of(sibling.name)
        if found is not None and found[0] == path.name and not process_is_running(found[1]):
            remove_path(sibling)


def process_is_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = fresh_temporary(path)
    try:
        yield temporary
        replace_path(temporary, path)
    finally:
        remove_path(temporary)


def write_json(path: Path, value) -> None:
    """`value` as JSON (indent 2, sorted keys, a final newline), written atomically."""
    import json

    with written_atomically(Path(path)) as temporary:
        temporary.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")
