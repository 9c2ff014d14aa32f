"""The interpreter check the Makefile runs before pip: an x86_64 Python on a Mac cannot install torch 2.13."""

import subprocess
import sys

import pytest
from harness import REPO

from sd3coreml import install_check


@pytest.mark.parametrize(
    ("system", "machine", "translated", "expected"),
    [
        ("Darwin", "x86_64", True, "runs as x86_64 under Rosetta on this Apple Silicon Mac, and torch==2.13.0"),
        ("Darwin", "x86_64", False, "is an x86_64 Python on macOS (an Intel Mac, or Rosetta on Apple Silicon)"),
        ("Darwin", "arm64", False, None),
        ("Linux", "x86_64", False, None),
        ("Linux", "aarch64", False, None),
    ],
    ids=["rosetta", "intel-or-x86-build", "apple-silicon", "linux", "linux-arm"],
)
def test_only_an_x86_64_python_on_macos_is_refused(system, machine, translated, expected):
    problem = install_check.interpreter_problem(system, machine, translated, "/usr/local/bin/python3.11")
    if expected is None:
        assert problem is None
    else:
        assert problem.startswith(f"error: /usr/local/bin/python3.11 {expected}")
        assert "make PYTHON=/opt/homebrew/bin/python3.11" in problem and "python.org's universal installer" in problem
        assert "\n" not in problem


def test_main_refuses_on_a_faked_intel_platform_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(install_check.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(install_check.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(install_check, "rosetta_translated", lambda: True)
    assert install_check.main() == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {sys.executable} runs as x86_64 under Rosetta")

    monkeypatch.setattr(install_check.platform, "machine", lambda: "arm64")
    assert install_check.main() == 0
    assert capsys.readouterr().err == ""


def test_rosetta_is_read_from_sysctl(monkeypatch):
    answers = {"1\n": True, "0\n": False}
    for stdout, translated in answers.items():
        done = subprocess.CompletedProcess([], 0, stdout=stdout, stderr="")
        monkeypatch.setattr(install_check.subprocess, "run", lambda *args, done=done, **kwargs: done)
        assert install_check.rosetta_translated() is translated
    # An Intel Mac has no such key: sysctl fails.
    missing = subprocess.CompletedProcess([], 1, stdout="", stderr="unknown oid 'sysctl.proc_translated'")
    monkeypatch.setattr(install_check.subprocess, "run", lambda *args, **kwargs: missing)
    assert install_check.rosetta_translated() is False


def test_the_script_runs_alone_with_the_standard_library_and_passes_here():
    # As the Makefile runs it: a file path, before anything is installed (-I: no site-packages).
    result = subprocess.run(
        [sys.executable, "-I", str(REPO / "src" / "sd3coreml" / "install_check.py")], capture_output=True, text=True
    )
    assert (result.returncode, result.stderr) == (0, "")
