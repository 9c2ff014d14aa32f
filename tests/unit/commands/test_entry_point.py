"""The installed `sd3coreml` command reaches the same steps as `python -m sd3coreml`.

pyproject.toml names the console script's target as a string that nothing imports until a user
runs the command, so a moved module breaks it silently; these tests load it as pip installed it.
"""

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from sd3coreml.commands import main as commands_main


def console_script():
    matches = [point for point in entry_points(group="console_scripts") if point.name == "sd3coreml"]
    assert len(matches) == 1, "no sd3coreml console script installed: run `make .venv/.installed`"
    return matches[0]


def test_console_script_entry_point_lists_every_step(monkeypatch, capsys):
    entry = console_script().load()
    assert entry is commands_main.main
    # The generated script passes main()'s return value to sys.exit, so a step's failure code is
    # the command's; --help leaves through argparse's own SystemExit.
    monkeypatch.setattr(sys, "argv", ["sd3coreml", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        entry()
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    missing = [step for step in commands_main.STEP_MODULES if step not in shown]
    assert not missing, f"--help does not list {missing}"


def test_installed_command_runs_and_passes_on_the_exit_code():
    script = Path(sys.executable).parent / "sd3coreml"
    assert script.exists(), f"{script} missing: reinstall with `pip install --no-deps -e .`"
    shown = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "convert-vae-decoder" in shown.stdout
    # A step that fails with the project's error returns 1 from main(); the command must exit so.
    failed = subprocess.run(
        [script, "download-snapshot", "--repo", "a/b", "--revision", "0" * 40, "--pins-json", "not json",
         "--out", "never-written"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    assert failed.stderr.startswith("error: --pins-json: not JSON")
