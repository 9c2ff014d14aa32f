"""The macOS workflow cannot rot unseen: every make target, command and config it runs exists."""

import re
import shlex

import yaml
from harness import REPO, copy_of_build, snakemake

from sd3coreml.commands import main as cli

WORKFLOW = yaml.safe_load((REPO / ".github" / "workflows" / "macos.yml").read_text())
STEPS = WORKFLOW["jobs"]["mac"]["steps"]
COMMANDS = [shlex.split(step["run"].replace("PATH=$PWD/.venv/bin:$PATH ", "")) for step in STEPS if "run" in step]


def test_it_runs_on_a_mac_that_loads_ios18_packages():
    assert WORKFLOW["jobs"]["mac"]["runs-on"] == "macos-15"


def test_every_make_target_exists():
    makefile = (REPO / "Makefile").read_text()
    targets = [command[1] for command in COMMANDS if command[0] == "make"]
    assert targets == ["demo", "test"]
    for target in targets:
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target


def test_every_sd3coreml_command_exists_with_its_options():
    steps = [command[command.index("sd3coreml") + 1 :] for command in COMMANDS if "sd3coreml" in command]
    assert [arguments[0] for arguments in steps] == ["verify-folder", "mac-selfcheck"]
    for arguments in steps:
        cli.build_parser(arguments[0]).parse_args(arguments)  # exits on an unknown step or option


def test_every_snakemake_run_plans_on_the_session_build(demo_workdir, tmp_path):
    """Each snakemake command of the workflow, dry, on a copy of the demo build: configs and targets exist."""
    workdir = copy_of_build(demo_workdir, tmp_path / "work")
    runs = [command[1:] for command in COMMANDS if command[0] == "snakemake"]
    assert len(runs) == 2
    for arguments in runs:
        configs = arguments[arguments.index("--configfile") + 1 : next(
            i for i, word in enumerate(arguments) if word.startswith("-c") and word != "--configfile")]  # fmt: skip
        targets = [word for word in arguments[arguments.index(configs[-1]) + 1 :] if not word.startswith("-")]
        command = ["-n", "--configfile", *(str(workdir / path) for path in configs), "--", *targets]
        snakemake(workdir, *command, config=configs[0])
