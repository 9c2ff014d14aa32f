"""Shared fixtures: one demo build per test session, in a scratch working directory."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FAKE_COMPILER = Path(__file__).parent / "fake_coremlcompiler"
# Test hooks a run's processes load (see its docstring), each switched on by a variable.
JOB_HOOKS = Path(__file__).parent / "job_hooks"
# Where the session build's jobs record the modules they loaded.
MODULE_RECORDS = "module_records"
DEMO_FOLDERS = ["coremlsd3_4step_packages", "coremlsd3_2step_packages"]
# The sweep too: it shares the build's stages, and one run keeps both cores busy.
DEMO_TARGETS = [*DEMO_FOLDERS, "sweep"]


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


@pytest.fixture(scope="session")
def demo_workdir(tmp_path_factory) -> Path:
    """The demo's two packages folders and its sweep, built once from nothing like `make demo` does.

    SD3COREML_DEMO_WORKDIR names a folder to build in and keep, for quick reruns by hand.
    """
    kept = os.environ.get("SD3COREML_DEMO_WORKDIR")
    workdir = new_workdir(Path(kept) if kept else tmp_path_factory.mktemp("demo"))
    shutil.rmtree(workdir / MODULE_RECORDS, ignore_errors=True)  # records of this build's jobs only
    snakemake(workdir, "-c2", *DEMO_TARGETS, env=recording_modules(workdir))
    return workdir


@pytest.fixture(scope="session")
def demo_app_workdir(demo_workdir) -> Path:
    """The demo plus its 4-step app folder, compiled by the test-double compiler."""
    command = (
        f"{FAKE_COMPILER} compile {{package}} {{output_dir}} --platform iOS --deployment-target {{deployment_target}}"
    )
    config = yaml.safe_load((demo_workdir / "config" / "demo.yaml").read_text())
    config["compiler"]["command"] = command
    (demo_workdir / "config" / "demo_fake_compiler.yaml").write_text(yaml.safe_dump(config))
    snakemake(
        demo_workdir,
        "-c2",
        "coremlsd3_4step",
        config="config/demo_fake_compiler.yaml",
        env=recording_modules(demo_workdir),
    )
    return demo_workdir


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size_bytes) -> a fresh folder on a tmpfs of that size, unmounted after the test (we run as root)."""
    mounted = []

    def mount(size_bytes: int) -> Path:
        disk = tmp_path / f"tmpfs{len(mounted)}"
        disk.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(disk)],
                                capture_output=True, text=True, check=False)  # fmt: skip
        if result.returncode:
            pytest.skip(f"mounting a small tmpfs needs root: {result.stderr.strip()}")
        mounted.append(disk)
        return disk

    yield mount
    for disk in mounted:
        subprocess.run(["umount", str(disk)], check=True)
