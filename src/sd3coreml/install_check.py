"""Whether this Python can install the pinned wheels; the Makefile runs this file before pip.

torch==2.13.0 has no macOS x86_64 wheel, so an x86_64 Python on a Mac cannot install the pins
(pip's resolution fails after minutes); every other pin resolves for arm64. Such a Python is an
Intel Mac's, or, on Apple Silicon, an x86_64 build (an Intel Homebrew carried over, an Intel
python.org build) or any Python started from a shell under Rosetta. Standard library only: it
runs with the interpreter that is about to make the venv, before anything is installed.

Usage: python src/sd3coreml/install_check.py   (exit 1 and one `error:` line when refused)
"""

import platform
import subprocess
import sys

ARM64_PYTHON = "/opt/homebrew/bin/python3.11"


def rosetta_translated() -> bool:
    """Whether this process runs under Rosetta: `sysctl.proc_translated` is 1 there, 0 natively on
    Apple Silicon, and missing on an Intel Mac."""
    try:
        answer = subprocess.run(
            ["/usr/sbin/sysctl", "-n", "sysctl.proc_translated"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return answer.returncode == 0 and answer.stdout.strip() == "1"


def interpreter_problem(system: str, machine: str, translated: bool, python: str) -> str | None:
    """One line saying why `python` cannot install the pins, or None where it can."""
    if system != "Darwin" or machine != "x86_64":
        return None
    what = (
        "runs as x86_64 under Rosetta on this Apple Silicon Mac"
        if translated
        else "is an x86_64 Python on macOS (an Intel Mac, or Rosetta on Apple Silicon)"
    )
    return (
        f"error: {python} {what}, and torch==2.13.0 has no macOS x86_64 wheel: on Apple Silicon use an arm64 "
        f"Python 3.11, make PYTHON={ARM64_PYTHON} (Homebrew's python@3.11) or python.org's universal installer, "
        "from a terminal not under Rosetta (uname -m says arm64); an Intel Mac cannot install the pins: "
        "convert on Linux (docs/MAC_AND_CLUSTER.md)"
    )


def main() -> int:
    system, machine = platform.system(), platform.machine()
    translated = system == "Darwin" and rosetta_translated()
    problem = interpreter_problem(system, machine, translated, sys.executable)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
