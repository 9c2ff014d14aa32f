"""The Makefile's choices about the host: the command that checks SHA256SUMS."""

import shutil
import subprocess
from pathlib import Path

import pytest
from harness import REPO, sha256_check_command

MAKE = shutil.which("make")


def fake_tool(bin_dir: Path, name: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / name).chmod(0o755)


def planned_demo_commands(path: str) -> str:
    """What `make -n demo` would run with this PATH (printed only: -n runs nothing)."""
    result = subprocess.run(
        [MAKE, "-n", "-C", str(REPO), "demo"], env={"PATH": path}, capture_output=True, text=True, check=True
    )
    return result.stdout


@pytest.mark.skipif(MAKE is None, reason="no make on PATH")
def test_make_demo_checks_sums_with_shasum_where_sha256sum_is_missing(tmp_path):
    # macOS 14: shasum, no sha256sum.
    fake_tool(tmp_path / "macos14", "shasum")
    commands = planned_demo_commands(str(tmp_path / "macos14"))
    assert "cd results/demo/coremlsd3_4step_packages && shasum -a 256 -c --quiet SHA256SUMS" in commands
    assert "sha256sum" not in commands

    fake_tool(tmp_path / "linux", "sha256sum")
    commands = planned_demo_commands(str(tmp_path / "linux"))
    assert "cd results/demo/coremlsd3_2step_packages && sha256sum -c --quiet SHA256SUMS" in commands
    assert "shasum" not in commands


def test_the_tests_check_sums_with_shasum_where_sha256sum_is_missing(tmp_path, monkeypatch):
    fake_tool(tmp_path / "macos14", "shasum")
    monkeypatch.setenv("PATH", str(tmp_path / "macos14"))
    assert sha256_check_command() == ["shasum", "-a", "256", "-c"]

    fake_tool(tmp_path / "macos14", "sha256sum")
    assert sha256_check_command() == ["sha256sum", "-c"]

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(pytest.skip.Exception, match="neither sha256sum nor shasum"):
        sha256_check_command()
