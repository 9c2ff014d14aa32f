"""The session build shared by pytest-xdist's workers (tests/session_build.py): made once under a lock,
its failure told to every later asker, and a write into it caught, but not coremltools' rewrite of a
package's Manifest.json with the same bytes."""

import os
import subprocess
import sys
import time

import pytest
from harness import TESTS
from session_build import assert_unchanged, shared_build

SLOW_BUILDER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from session_build import shared_build

def build(folder):
    (Path(sys.argv[1]) / "started").touch()
    time.sleep(2)
    (folder / "demo.mlpackage").mkdir(parents=True)
    (folder / "demo.mlpackage" / "Manifest.json").write_text("{}")
    return {"built_by": "the other process"}

shared_build(Path(sys.argv[1]), Path(sys.argv[1]) / "demo", build)
"""


def test_a_worker_asking_during_the_build_waits_and_reads_the_builders_record(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", SLOW_BUILDER, str(tmp_path), str(TESTS)])
    while not (tmp_path / "started").exists():
        assert other.poll() is None, "the building process ended before it built"
        time.sleep(0.05)

    def build_again(folder):
        raise AssertionError("built a second time")

    record = shared_build(tmp_path, tmp_path / "demo", build_again)
    assert other.wait() == 0
    assert record["built_by"] == "the other process" and record["folder"] == str(tmp_path / "demo")


def test_a_failed_build_fails_every_later_asker_with_its_error(tmp_path):
    def failing(folder):
        raise RuntimeError("snakemake coremlsd3_4step_packages failed")

    with pytest.raises(RuntimeError):
        shared_build(tmp_path, tmp_path / "demo", failing)
    with pytest.raises(AssertionError, match="failed in another worker:\nRuntimeError: snakemake"):
        shared_build(tmp_path, tmp_path / "demo", lambda folder: {})


def built(tmp_path) -> dict:
    def build(folder):
        (folder / "a.mlpackage").mkdir(parents=True)
        (folder / "a.mlpackage" / "Manifest.json").write_text('{"rootModelIdentifier": "1"}')
        (folder / "SHA256SUMS").write_text("sums\n")
        return {}

    return shared_build(tmp_path, tmp_path / "demo", build)


def test_a_manifest_rewritten_with_its_own_bytes_is_no_change(tmp_path):
    record = built(tmp_path)
    manifest = tmp_path / "demo" / "a.mlpackage" / "Manifest.json"
    rewrite = manifest.with_name("Manifest.0e5b1d7e-3c1f-4a8e-9d2b-4f6a8c0e2b1d")
    rewrite.write_bytes(manifest.read_bytes())
    os.utime(rewrite, ns=(1, 1))
    rewrite.rename(manifest)
    assert_unchanged(record)


@pytest.mark.parametrize("change", ["rewritten manifest", "touched file", "new file"])
def test_a_write_into_the_build_fails_naming_the_path(tmp_path, change):
    record = built(tmp_path)
    demo = tmp_path / "demo"
    if change == "rewritten manifest":
        path = "a.mlpackage/Manifest.json"
        (demo / path).write_text('{"rootModelIdentifier": "2"}')
    elif change == "touched file":
        path = "SHA256SUMS"
        os.utime(demo / path, ns=(1, 1))
    else:
        path = "results.json"
        (demo / path).write_text("{}")
    with pytest.raises(AssertionError, match=f"wrote into the shared session build .* \\({path}\\)"):
        assert_unchanged(record)
