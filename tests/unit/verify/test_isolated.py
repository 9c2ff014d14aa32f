"""A Core ML child's temporary root: removed whatever the child's end, stale ones removed by the next run,
and every stderr line reaches the caller, not only the tail."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from harness import TESTS

from sd3coreml.verify.isolated import (
    CHILD_PID_FILE,
    ROOT_PREFIX,
    STDERR_LINES,
    remove_stale_roots,
    root_owner,
    run_isolated,
)


@pytest.fixture
def temporary_folder(monkeypatch, tmp_path):
    """The parent's temporary folder, this test's own: what the children leave is seen here alone."""
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def copy_of(result) -> Path:
    """Where the child wrote its temporary copy (it says so on stderr)."""
    line = next(line for line in result.stderr if line.startswith("temporary copy: "))
    return Path(line.removeprefix("temporary copy: "))


def test_a_sigkilled_childs_temporary_root_is_removed(temporary_folder):
    result = run_isolated("isolated_children:leave_temporary_files_then_die", {"size": 1 << 20}, timeout_s=60)
    assert result.failure["failure"] == "signal" and result.failure["signal"] == "SIGKILL"
    # The child's temporary folder was inside a root named after this process, in the parent's folder.
    root = copy_of(result).parent.parent
    assert root.parent == temporary_folder and root.name.startswith(f"{ROOT_PREFIX}{os.getpid()}-")
    assert not root.exists() and list(temporary_folder.iterdir()) == []


def test_a_timed_out_childs_temporary_root_is_removed(temporary_folder):
    kwargs = {"size": 1 << 20, "seconds": 30}
    result = run_isolated("isolated_children:leave_temporary_files_then_hang", kwargs, timeout_s=2)
    assert result.failure["failure"] == "timeout"
    assert copy_of(result).name.endswith(".mlmodelc") and list(temporary_folder.iterdir()) == []


def test_a_childs_value_comes_back_and_its_root_goes(temporary_folder):
    result = run_isolated("isolated_children:leave_temporary_files", {"size": 16}, timeout_s=60)
    assert result.ok and Path(result.value).name.endswith(".mlmodelc")
    assert list(temporary_folder.iterdir()) == [] and result.started_at is not None


def test_stale_roots_go_and_roots_in_use_stay(tmp_path):
    gone = dead_pid()
    stale = tmp_path / f"{ROOT_PREFIX}{gone}-abc"
    (stale / "tmp" / "stage.mlmodelc").mkdir(parents=True)
    ours = tmp_path / f"{ROOT_PREFIX}{os.getpid()}-def"  # this process is alive
    ours.mkdir()
    orphaned = tmp_path / f"{ROOT_PREFIX}{gone}-ghi"  # its parent is gone, its child still runs
    orphaned.mkdir()
    (orphaned / CHILD_PID_FILE).write_text(str(os.getpid()))
    finished = tmp_path / f"{ROOT_PREFIX}{gone}-jkl"  # parent and child gone
    finished.mkdir()
    (finished / CHILD_PID_FILE).write_text(str(dead_pid()))
    others = [tmp_path / "sd3coreml-coreml-notapid-x", tmp_path / "unrelated"]
    for other in others:
        other.mkdir()
    assert remove_stale_roots(tmp_path) == [stale, finished]
    assert sorted(tmp_path.iterdir()) == sorted([ours, orphaned, *others])


def test_the_owner_is_read_from_a_roots_name():
    assert root_owner(f"{ROOT_PREFIX}4242-x1y2") == 4242
    assert root_owner(f"{ROOT_PREFIX}x-4242") is None and root_owner("sd3coreml-child-4242") is None


def test_the_next_run_removes_a_dead_parents_root(temporary_folder):
    stale = temporary_folder / f"{ROOT_PREFIX}{dead_pid()}-abc"
    (stale / "tmp").mkdir(parents=True)
    assert run_isolated("isolated_children:add", {"a": 1, "b": 1}, timeout_s=60).value == 2
    assert list(temporary_folder.iterdir()) == []


def test_every_stderr_line_reaches_the_caller_though_the_tail_keeps_twenty(temporary_folder):
    lines = ["ANECCompile() FAILED (11)", *(f"line {number}" for number in range(50))]
    seen = []
    result = run_isolated("isolated_children:print_to_stderr", {"lines": lines, "then_kill": True}, 60, seen.append)
    assert seen == lines
    assert result.stderr == lines[-STDERR_LINES:] and "ANECCompile() FAILED (11)" not in result.stderr
