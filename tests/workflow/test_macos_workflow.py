"""The macOS workflow cannot rot unseen: every make target, command and config it runs exists, every step
predicts with the same compute units, and the Xcode that compiles is pinned."""

import re
import shlex

import yaml
from harness import REPO, copy_of_build, snakemake

from sd3coreml.commands import main as cli
from sd3coreml.pipeline.disk import SKIP_MEMORY_CHECK

WORKFLOW = yaml.safe_load((REPO / ".github" / "workflows" / "macos.yml").read_text())
STEPS = WORKFLOW["jobs"]["mac"]["steps"]
COMMANDS = [shlex.split(step["run"].replace("PATH=$PWD/.venv/bin:$PATH ", "")) for step in STEPS if "run" in step]
RUN_STEPS = [index for index, step in enumerate(STEPS) if "run" in step]


def test_it_runs_on_a_mac_that_loads_ios18_packages():
    assert WORKFLOW["jobs"]["mac"]["runs-on"] == "macos-15"


def test_the_runner_s_7_gb_do_not_stop_the_demo():
    """Its jobs declare more than a hosted runner's memory; every step's Snakemake would refuse them."""
    assert WORKFLOW["jobs"]["mac"]["env"] == {SKIP_MEMORY_CHECK: "1"}


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


def test_every_snakemake_run_plans_on_the_session_build(demo_build, tmp_path):
    """Each snakemake command of the workflow, dry, on a copy of the demo build: configs and targets exist."""
    workdir = copy_of_build(demo_build, tmp_path / "work")
    runs = [command[1:] for command in COMMANDS if command[0] == "snakemake"]
    assert len(runs) == 2
    for arguments in runs:
        configs = arguments[arguments.index("--configfile") + 1 : next(
            i for i, word in enumerate(arguments) if word.startswith("-c") and word != "--configfile")]  # fmt: skip
        targets = [word for word in arguments[arguments.index(configs[-1]) + 1 :] if not word.startswith("-")]
        command = ["-n", "--configfile", *(str(workdir / path) for path in configs), "--", *targets]
        snakemake(workdir, *command, config=configs[0])


def run_steps() -> list[tuple[int, list[str]]]:
    """(index in the step list, command) of every step that runs a command."""
    return [(index, command) for index, command in zip(RUN_STEPS, COMMANDS, strict=True)]


def demo_recipe_configs() -> list[str]:
    """The configs `make demo` passes to Snakemake, read from the Makefile's recipe."""
    recipe = (REPO / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    words = shlex.split(recipe.replace("\\\n", " "))
    return [words[words.index("--configfile") + 1]]


def compute_units(configs: list[str]) -> str:
    """fidelity.coreml_compute_units of the configs merged in order, else the schema's default."""
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    units = schema["properties"]["fidelity"]["properties"]["coreml_compute_units"]["default"]
    for config in configs:
        units = (yaml.safe_load((REPO / config).read_text()) or {}).get("fidelity", {}).get(
            "coreml_compute_units", units
        )
    return units


def test_every_step_predicts_with_the_same_compute_units():
    """A setting merged into one step is a changed param of every fidelity job it shares with `make demo`."""
    configs = {"make demo": demo_recipe_configs()}
    for _, command in run_steps():
        if command[0] == "snakemake":
            assert "--config" not in command and "--set-resources" not in command, command
            configs[" ".join(command)] = command[command.index("--configfile") + 1 : command.index("-c3")]
    units = {step: compute_units(step_configs) for step, step_configs in configs.items()}
    assert set(units.values()) == {"CPU_AND_NE"}, units
    assert all("coreml_compute_units" not in str(step.get("env", "")) for step in STEPS)


def test_xcode_is_pinned_to_an_exact_version_before_anything_can_compile():
    pins = [(index, command) for index, command in run_steps() if command[:3] == ["sudo", "xcode-select", "-s"]]
    assert len(pins) == 1, pins
    index, command = pins[0]
    # An exact version's folder, not /Applications/Xcode.app, which the image points at its default.
    assert re.fullmatch(r"/Applications/Xcode_16\.\d+(\.\d+)?\.app/Contents/Developer", command[3]), command
    first_tool = min(i for i, command in run_steps() if command[0] in ("make", "snakemake", ".venv/bin/python"))
    assert index < first_tool
