"""The Makefile's choices about the host: the command that checks SHA256SUMS, the Python it refuses."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness import REPO, sha256_check_command

MAKE = shutil.which("make")


def script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def fake_tool(bin_dir: Path, name: str) -> None:
    script(bin_dir / name, "exit 0")


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


# A Python 3.11 that takes itself for an x86_64 Mac: the real interpreter, with platform faked for
# the install check only.
X86_64_MAC_PYTHON = f"""#!/bin/sh
if [ "$1" = src/sd3coreml/install_check.py ]; then
    exec {sys.executable} -c 'import platform, runpy, sys
platform.system = lambda: "Darwin"
platform.machine = lambda: "x86_64"
runpy.run_path(sys.argv[1], run_name="__main__")' "$1"
fi
exec {sys.executable} "$@"
"""


@pytest.mark.skipif(MAKE is None, reason="no make on PATH")
def test_make_refuses_an_x86_64_mac_python_before_making_a_venv_or_running_pip(tmp_path):
    python = tmp_path / "python3.11"
    python.write_text(X86_64_MAC_PYTHON)
    python.chmod(0o755)
    venv = tmp_path / "venv"
    result = subprocess.run(
        [MAKE, "-C", str(REPO), f"VENV={venv}", f"PYTHON={python}", f"{venv}/.installed"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {sys.executable} is an x86_64 Python on macOS (an Intel Mac, or Rosetta on Apple Silicon), "
        "and torch==2.13.0 has no macOS x86_64 wheel: on Apple Silicon use an arm64 Python 3.11, "
        "make PYTHON=/opt/homebrew/bin/python3.11 (Homebrew's python@3.11) or python.org's universal installer, "
        "from a terminal not under Rosetta (uname -m says arm64); an Intel Mac cannot install the pins: "
        "convert on Linux (docs/MAC_AND_CLUSTER.md)"
    ]
    assert "pip" not in result.stdout and not venv.exists()


def test_the_install_check_comes_before_the_venv_and_pip():
    recipe = (REPO / "Makefile").read_text().split("$(STAMP): ", 1)[1].split("\n\n", 1)[0].splitlines()
    check = next(i for i, line in enumerate(recipe) if line.strip() == "@$(PYTHON) $(INSTALL_CHECK)")
    assert check < next(i for i, line in enumerate(recipe) if "-m venv" in line or "pip install" in line)


def arm64_python(bin_dir: Path) -> Path:
    """A stand-in arm64 Python 3.11: passes the version and install checks, and `-m venv DIR` copies
    a venv of stand-ins (a python that passes both, a pip that only logs its arguments) into DIR/bin."""
    venv_bin = bin_dir / "venv_bin"
    script(venv_bin / "python", "exit 0")
    script(venv_bin / "pip", 'echo "pip $*" >> "$(dirname "$0")/../pip.log"')
    return script(
        bin_dir / "python3.11",
        f'[ "$1" = -m ] && mkdir -p "$3/bin" && cp {venv_bin}/python {venv_bin}/pip "$3/bin/"\nexit 0',
    )


@pytest.mark.skipif(MAKE is None, reason="no make on PATH")
def test_a_venv_made_by_an_x86_64_python_is_made_again(tmp_path):
    # A .venv left by an earlier try with an x86_64 Python: its python fails the install check.
    venv = tmp_path / "venv"
    script(venv / "bin" / "python", 'case "$1" in */install_check.py) exit 1 ;; esac')
    (venv / "left_by_the_x86_64_python").write_text("")

    arm64 = arm64_python(tmp_path / "arm64")
    result = subprocess.run(
        [MAKE, "-C", str(REPO), f"VENV={venv}", f"PYTHON={arm64}", f"{venv}/.installed"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{venv} is not a Python 3.11 that can install the pins: making it again" in result.stdout
    assert not (venv / "left_by_the_x86_64_python").exists()
    assert "pip install --quiet -r requirements.txt" in (venv / "pip.log").read_text()
    assert (venv / ".installed").exists()
