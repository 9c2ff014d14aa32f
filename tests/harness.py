"""What tests share: the repository's paths, Snakemake runs in scratch working directories, copies of a build.

Fixtures live in conftest.py; this module is importable from every test folder (pytest's
`pythonpath` names tests/)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
# The stand-in for xcrun coremlcompiler: it writes a compiled tree the folder checks accept.
FAKE_COMPILER = TESTS / "fake_coremlcompiler"
# Test hooks a run's processes load (see its docstring), each switched on by a variable.
JOB_HOOKS = TESTS / "job_hooks"
# Where the session build's jobs record the modules they loaded.
MODULE_RECORDS = "module_records"
DEMO_FOLDERS = ["coremlsd3_4step_packages", "coremlsd3_2step_packages"]
# The sweep too: it shares the build's stages, and one run keeps both cores busy.
DEMO_TARGETS = [*DEMO_FOLDERS, "sweep"]
# The tiny SD3.5, a third model of the session build: its own config, the demo's components.
SD35_CONFIG, SD35_FOLDER = "config/demo-sd3.5.yaml", "coremlsd3_sd35_packages"
SD35_TARGETS = [SD35_FOLDER, f"results/demo/reports/{SD35_FOLDER}/end_to_end.json"]


def snakemake(
    workdir: Path, *args: str, config: str = "config/demo.yaml", check: bool = True, env=None, snakefile=None
):
    """Run the project's Snakefile (or `snakefile`) in `workdir`; shell steps find this interpreter's `python`."""
    env = {**os.environ, **(env or {})}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile or REPO / "Snakefile")]
    command += ["--directory", str(workdir), "--configfile", str(workdir / config), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def write_config(workdir: Path, name: str, **changes) -> str:
    """A variant of the demo config under `workdir/config/`, returned as a relative path."""
    config = yaml.safe_load((workdir / "config" / "demo.yaml").read_text())
    config.update(changes)
    (workdir / "config" / name).write_text(yaml.safe_dump(config))
    return f"config/{name}"


def new_workdir(path: Path) -> Path:
    shutil.copytree(REPO / "config", path / "config", dirs_exist_ok=True)
    return path


def copy_of_build(workdir: Path, path: Path) -> Path:
    """`workdir`'s config, results and Snakemake's records at `path`, times kept: up to date there too.

    For a test that changes a build: the session build is shared by every test, so change a copy.
    """
    new_workdir(path)
    # copy2 keeps the mtimes, so Snakemake sees the copied artifacts as up to date.
    shutil.copytree(workdir / "results", path / "results", copy_function=shutil.copy2, symlinks=True)
    shutil.copytree(workdir / ".snakemake" / "metadata", path / ".snakemake" / "metadata", copy_function=shutil.copy2)
    return path


def recording_modules(workdir: Path) -> dict:
    return {"PYTHONPATH": str(JOB_HOOKS), "SD3COREML_TEST_RECORD_MODULES": str(workdir / MODULE_RECORDS)}


def make_package(parent: Path, name: str, model_bytes: bytes = b"weights") -> Path:
    """A tiny stand-in for an `.mlpackage` folder (no coremltools conversion)."""
    package = parent / name
    model_dir = package / "Data" / "com.apple.CoreML"
    model_dir.mkdir(parents=True)
    (package / "Manifest.json").write_text('{"fileFormatVersion": "1.0.0"}\n')
    (model_dir / "model.mlmodel").write_bytes(model_bytes)
    return package
