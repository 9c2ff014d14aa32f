"""Shared fixtures: one demo build per test session, in a scratch working directory; a small tmpfs;
an offline Hugging Face cache.

A test that takes the session build (directly or through another fixture) is marked `demo`:
`pytest -m "not demo"` runs everything that needs no build.
"""

import os
import shutil
import subprocess
from pathlib import Path

import harness
import pytest
import yaml
from harness import (
    DEMO_TARGETS,
    FAKE_COMPILER_TEMPLATE,
    MODULE_RECORDS,
    SD35_CONFIG,
    SD35_TARGETS,
    copy_tree,
    new_workdir,
    recording_modules,
    snakemake,
)
from offline_hub import MODEL_REPO, SD3_FILES, SD3_REPO, UNPINNED, WEIGHTS, fill_cache
from session_build import assert_unchanged, shared_build, shared_root

# The session build's copy that tests run Snakemake in, and the shared build itself (read-only).
WRITING_FIXTURES, READING_FIXTURES = {"demo_workdir", "demo_app_workdir"}, {"demo_build", "demo_build_record"}
# Reading files that build in a copy of their own (about a minute each): first among the readers,
# so that neither is the run's tail. A file missing here only keeps its place in collection order.
LONG_READERS = ("tests/workflow/test_reproducible.py", "tests/demo/test_budget_recipe_folder.py")


def pytest_collection_modifyitems(items):
    for item in items:
        if (WRITING_FIXTURES | READING_FIXTURES) & set(item.fixturenames):
            item.add_marker(pytest.mark.demo)


def files_naming(root: Path, *fixture_sets: set[str]) -> list[set[str]]:
    """For each set of fixtures, the test files that name one of them, as pytest-xdist's node ids spell them."""
    texts = {path.relative_to(root).as_posix(): path.read_text() for path in (root / "tests").rglob("test_*.py")}
    return [{name for name, text in texts.items() if any(fixture in text for fixture in fixtures)}
            for fixtures in fixture_sets]  # fmt: skip


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (`make test` runs `-n 2`), a file at a time (a module's fixtures are made
    once), with two changes to the order. Every file that runs Snakemake in the build's copy goes,
    as one unit and first, to one worker, which builds the session build, copies it and runs them
    in their usual order, so no two runs share that copy at once. Files that only read the shared
    build come last, the long ones first among them, so the other worker does not wait for the
    build while other files remain. The controller sees node ids only, not fixtures, so a file
    counts by naming a fixture."""
    if config.getvalue("dist") not in ("load", "loadscope"):
        return None
    from xdist.scheduler import LoadScopeScheduling

    writing, reading = files_naming(config.rootpath, WRITING_FIXTURES, READING_FIXTURES)
    reading -= writing

    class BuildFirstReadersLast(LoadScopeScheduling):
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "session-build" if path in writing else path

        def _assign_work_unit(self, node) -> None:
            if not self.ordered:
                readers = [scope for scope in self.workqueue if scope in reading]
                for scope in sorted(readers, key=lambda path: path not in LONG_READERS):
                    self.workqueue.move_to_end(scope)
                if "session-build" in self.workqueue:
                    self.workqueue.move_to_end("session-build", last=False)
                self.ordered = True
            super()._assign_work_unit(node)

    return BuildFirstReadersLast(config, log)


@pytest.fixture(scope="session")
def job_server():
    """One warm job server for the session's Snakemake runs (harness.snakemake() hands it to their jobs),
    stopped at the end: a demo job then skips 3-5 s of imports."""
    server = harness.JobServer()
    try:
        server.wait_until_ready()
        harness.SESSION_JOB_SERVER = server
        yield server
    finally:
        harness.SESSION_JOB_SERVER = None
        server.stop()


@pytest.fixture(scope="session", autouse=True)
def snakemake_zygotes():
    """Warm Snakemakes for the session's dry runs (harness.snakemake() hands them over)."""
    harness.SESSION_ZYGOTES = harness.SnakemakeZygotes()
    try:
        yield harness.SESSION_ZYGOTES
    finally:
        harness.SESSION_ZYGOTES.stop()
        harness.SESSION_ZYGOTES = None


@pytest.fixture(scope="session")
def demo_build_record(tmp_path_factory, job_server) -> dict:
    """The demo's two packages folders and its sweep, built once from nothing like `make demo` does,
    then the tiny SD3.5's packages folder beside them (it builds only its own transformer's jobs);
    made once per run for every worker (tests/session_build.py), and its record: the folder, the
    jobs the builder's job server served, its fingerprint.

    SD3COREML_DEMO_WORKDIR names a folder to build in and keep, for quick reruns by hand. Its jobs run
    in the session's job server (tests/demo/test_served_jobs.py holds their bytes against jobs of their own).
    """

    def build(folder: Path) -> dict:
        workdir = new_workdir(folder)
        shutil.rmtree(workdir / MODULE_RECORDS, ignore_errors=True)  # records of this build's jobs only
        snakemake(workdir, "-c2", *DEMO_TARGETS, env=recording_modules(workdir))
        snakemake(workdir, "-c2", *SD35_TARGETS, config=SD35_CONFIG, env=recording_modules(workdir))
        return {"served": job_server.served()}

    root = shared_root(tmp_path_factory)
    kept = os.environ.get("SD3COREML_DEMO_WORKDIR")
    record = shared_build(root, Path(kept) if kept else root / "demo", build)
    yield record
    assert_unchanged(record)


@pytest.fixture(scope="session")
def demo_build(demo_build_record) -> Path:
    """The session build's folder, shared by every worker: read it or copy it (harness.copy_of_build)."""
    return Path(demo_build_record["folder"])


@pytest.fixture(scope="session")
def demo_workdir(demo_build, tmp_path_factory) -> Path:
    """This worker's copy of the session build, for the tests that run Snakemake in it."""
    return copy_tree(demo_build, tmp_path_factory.mktemp("demo-workdir") / "demo")


@pytest.fixture(scope="session")
def demo_app_workdir(demo_workdir) -> Path:
    """The demo plus its 4-step app folder, compiled by the test-double compiler."""
    config = yaml.safe_load((demo_workdir / "config" / "demo.yaml").read_text())
    config["compiler"]["command"] = FAKE_COMPILER_TEMPLATE
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


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An offline hub whose cache (tests/offline_hub.py) holds the distilled weights and SD3's components."""
    cache = tmp_path / "hub"
    fill_cache(cache, MODEL_REPO, {WEIGHTS: b"distilled weights"})
    fill_cache(cache, SD3_REPO, {**SD3_FILES, **UNPINNED})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub read both variables when it was imported.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache
