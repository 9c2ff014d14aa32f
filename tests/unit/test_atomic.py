"""Outputs move into place whole; what a killed writer left is cleaned by the next write."""

import subprocess

import pytest

from sd3coreml import atomic


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_leftovers_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "blocks0-2.fp16.mlpackage"
    dead, live = dead_pid(), subprocess.Popen(["sleep", "30"])
    try:
        dead_tmp = tmp_path / f".blocks0-2.fp16.tmp-{dead}.mlpackage"
        dead_old = tmp_path / f".blocks0-2.fp16.mlpackage.old-{dead}"
        live_tmp = tmp_path / f".blocks0-2.fp16.tmp-{live.pid}.mlpackage"
        other = tmp_path / f".blocks2-4.fp16.tmp-{dead}.mlpackage"
        for path in (dead_tmp, dead_old, live_tmp, other):
            path.mkdir()
        with atomic.written_atomically(target) as temporary:
            temporary.mkdir()
            (temporary / "weight.bin").write_bytes(b"w")
        assert (target / "weight.bin").read_bytes() == b"w"
        assert not dead_tmp.exists() and not dead_old.exists()
        # Another process may be writing right now, and another artifact's leftovers are not ours.
        assert live_tmp.exists() and other.exists()
    finally:
        live.kill()


def test_a_failing_write_leaves_the_old_output_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(OSError), atomic.written_atomically(target) as temporary:
        temporary.write_text("half")
        raise OSError(28, "No space left on device")
    assert target.read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["out.json"]
