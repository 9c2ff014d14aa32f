"""What tests share: the repository's paths, Snakemake runs in scratch working directories and what they
planned, copies of a build, stand-in packages and packages folders, a one-linear Core ML model.

Fixtures live in conftest.py; this module is importable from every test folder (pytest's
`pythonpath` names tests/)."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
# The stand-in for xcrun coremlcompiler: it writes a compiled tree the folder checks accept.
FAKE_COMPILER = TESTS / "fake_coremlcompiler"
# The double as a config's compiler.command: exactly the arguments it accepts.
FAKE_COMPILER_TEMPLATE = (
    f"{FAKE_COMPILER} compile {{package}} {{output_dir}} --platform iOS --deployment-target {{deployment_target}}"
)
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
# An MMDiT stage package's name in a folder, before its index.
STAGE = "MultiModalDiffusionTransformerStage"


class JobServer:
    """A warm job server (sd3coreml/job_server.py) for this session's Snakemake runs, in a temporary folder.

    It runs in the environment a test's job has (the job hooks on PYTHONPATH, one thread, the
    temporary folder Snakemake gives); a job whose run changes what it pins runs on its own.
    """

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="sd3coreml-jobs-"))  # short: a socket's path has ~100 bytes
        self.socket, self.log = self.folder / "socket", self.folder / "requests.log"
        command = [sys.executable, "-m", "sd3coreml.job_server", "--socket", str(self.socket), "--job-threads", "1"]
        with (self.folder / "server.err").open("wb") as stderr:
            self.process = subprocess.Popen(
                [*command, "--log", str(self.log)], env={**os.environ, **self.environment(with_socket=False)},
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
            )  # fmt: skip

    def environment(self, with_socket: bool = True) -> dict:
        """What a Snakemake run adds to hand its jobs to the server."""
        return {"PYTHONPATH": str(JOB_HOOKS), **({"SD3COREML_JOB_SERVER": str(self.socket)} if with_socket else {})}

    def wait_until_ready(self, timeout_s: float = 120) -> None:
        """Jobs that start before the server listens run on their own: wait, so that every job is served."""
        deadline = time.monotonic() + timeout_s
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                errors = (self.folder / "server.err").read_text()[-3000:]
                raise AssertionError(f"the job server did not start:\n{errors}")
            time.sleep(0.1)

    def served(self) -> dict[int, str]:
        """{child pid: step} of every job the server ran."""
        text = self.log.read_text() if self.log.exists() else ""
        return {int(pid): step for step, pid in re.findall(r"served \['([\w-]+)'\] as (\d+)", text)}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


# The session's job server, once conftest.py's `job_server` fixture started one: snakemake() hands it to the jobs.
SESSION_JOB_SERVER: JobServer | None = None


class SnakemakeZygote:
    """A warm Snakemake (tests/snakemake_zygote.py) that forks a child per dry run: each skips the
    second of imports and plugin discovery a `python -m snakemake` pays. A child keeps what its
    interpreter read when it started, so a zygote takes only runs whose startup() is its own."""

    def __init__(self, env: dict):
        self.env, self.lock = env, threading.Lock()
        self.folder = Path(tempfile.mkdtemp(prefix="sd3coreml-zygote-"))
        self.process = subprocess.Popen(
            [sys.executable, str(TESTS / "snakemake_zygote.py")], env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=(self.folder / "zygote.err").open("wb"),
        )  # fmt: skip

    def run(self, command: list[str], env: dict) -> subprocess.CompletedProcess:
        with self.lock:  # one request at a time: the answer is the next line
            return self.ask(command, env)

    def ask(self, command: list[str], env: dict) -> subprocess.CompletedProcess:
        out, err = self.folder / "stdout", self.folder / "stderr"
        request = {"args": command[3:], "env": env, "cwd": os.getcwd(), "stdout": str(out), "stderr": str(err)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise AssertionError(f"the Snakemake zygote died:\n{(self.folder / 'zygote.err').read_text()[-3000:]}")
        code = json.loads(answer)["returncode"]
        return subprocess.CompletedProcess(
            command, code, out.read_text(errors="replace"), err.read_text(errors="replace")
        )

    def stop(self) -> None:
        self.process.stdin.close()
        self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


# What an interpreter reads when it starts (Python's variables, the loader's, the test hooks'
# of tests/job_hooks, Snakemake's, locale, clock, temporary and home folders). The test hooks'
# SD3COREML_TEST_RECORD_MODULES is read at exit, by the library's steps only.
STARTUP_PREFIXES = ("PYTHON", "LD_", "DYLD_", "SD3COREML_TEST_", "SNAKEMAKE", "LC_", "LANG", "TZ", "TMP", "TEMP",
                    "XDG_", "HOME")  # fmt: skip


def startup(env: dict) -> tuple:
    return tuple(sorted((key, value) for key, value in env.items()
                        if key.startswith(STARTUP_PREFIXES) and key != "SD3COREML_TEST_RECORD_MODULES"))  # fmt: skip


class SnakemakeZygotes:
    """The session's warm Snakemakes, one per startup environment met twice, for dry runs only: a
    run that builds, or that a test interrupts, runs as its own process."""

    def __init__(self):
        self.zygotes, self.seen = {}, set()

    def run(self, command: list[str], env: dict) -> subprocess.CompletedProcess | None:
        """The dry run's result from a zygote, or None where it should run as its own process."""
        if not any(arg in ("-n", "--dry-run", "--dryrun") for arg in command):
            return None
        key = startup(env)
        if key not in self.zygotes:
            if key not in self.seen:  # once: no zygote for a variant no other run shares
                self.seen.add(key)
                return None
            self.zygotes[key] = SnakemakeZygote(env)
        return self.zygotes[key].run(command, env)

    def stop(self) -> None:
        for zygote in self.zygotes.values():
            zygote.stop()
        self.zygotes.clear()


# The session's warm Snakemakes, once conftest.py's `snakemake_zygotes` fixture made them.
SESSION_ZYGOTES: SnakemakeZygotes | None = None


def snakemake(
    workdir: Path,
    *args: str,
    config: str = "config/demo.yaml",
    check: bool = True,
    env=None,
    snakefile=None,
    job_server: bool = True,
):
    """Run the project's Snakefile (or `snakefile`) in `workdir`; shell steps find this interpreter's `python`.

    The jobs go to the session's job server if one runs (unless `job_server` is false); a job whose
    `env` changes what the server pins (its hash seed, PYTHONPATH, a test hook) runs on its own.
    """
    served = SESSION_JOB_SERVER.environment() if job_server and SESSION_JOB_SERVER else {}
    env = {**os.environ, **served, **(env or {})}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile or REPO / "Snakefile")]
    command += ["--directory", str(workdir), "--configfile", str(workdir / config), *args]
    result = SESSION_ZYGOTES.run(command, env) if SESSION_ZYGOTES else None
    if result is None:
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def planned_jobs(result) -> dict[str, int]:
    """The `Job stats:` table of a run (dry or real), as {rule: count}; empty when nothing is to be done."""
    output = result.stdout + result.stderr
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {name: int(count) for name, count in re.findall(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


def job_blocks(dry_run: str) -> list[str]:
    """The jobs of a dry run, each `rule NAME:` with its lines, in the order Snakemake would run them."""
    return re.split(r"\n(?=(?:local)?rule \w+:)", dry_run.split("Job stats:", 1)[1])[1:]


def only_error_line(result) -> str:
    """The one `error:` line a failed step or Snakemake run printed, after asserting it failed without a traceback."""
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    return errors[0]


def write_config(workdir: Path, name: str, **changes) -> str:
    """A variant of the demo config under `workdir/config/`, returned as a relative path."""
    config = yaml.safe_load((workdir / "config" / "demo.yaml").read_text())
    config.update(changes)
    (workdir / "config" / name).write_text(yaml.safe_dump(config))
    return f"config/{name}"


def new_workdir(path: Path) -> Path:
    shutil.copytree(REPO / "config", path / "config", dirs_exist_ok=True)
    return path


# What coremltools writes beside a package's Manifest.json whenever it opens the package (then
# renames it over Manifest.json, same bytes): another worker's test may be opening one of the
# shared build's packages while a test copies it.
MANIFEST_REWRITE = re.compile(r"Manifest\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def copy_tree(source: Path, destination: Path) -> Path:
    """`source` at `destination`, times kept (copy2: Snakemake sees copied artifacts as up to date)."""

    def rewrites(folder, names):
        return [name for name in names if MANIFEST_REWRITE.fullmatch(name)]

    return Path(shutil.copytree(source, destination, copy_function=shutil.copy2, symlinks=True, ignore=rewrites))


def copy_of_build(workdir: Path, path: Path) -> Path:
    """`workdir`'s config, results and Snakemake's records at `path`, times kept: up to date there too.

    For a test that changes a build: the session build is shared by every test, so change a copy.
    """
    new_workdir(path)
    copy_tree(workdir / "results", path / "results")
    copy_tree(workdir / ".snakemake" / "metadata", path / ".snakemake" / "metadata")
    return path


def recording_modules(workdir: Path) -> dict:
    return {"PYTHONPATH": str(JOB_HOOKS), "SD3COREML_TEST_RECORD_MODULES": str(workdir / MODULE_RECORDS)}


def sha256_check_command() -> list[str]:
    """The outside witness of the SHA256SUMS format: `sha256sum -c`, or `shasum -a 256 -c` where
    sha256sum is missing (macOS 14; /sbin/sha256sum ships from macOS 15), which reads the same
    lines; the calling test is skipped, with the reason, where neither is on PATH."""
    import pytest

    if shutil.which("sha256sum"):
        return ["sha256sum", "-c"]
    if shutil.which("shasum"):
        return ["shasum", "-a", "256", "-c"]
    pytest.skip("neither sha256sum nor shasum is on PATH: nothing outside this code can check SHA256SUMS")


def make_package(parent: Path, name: str, model_bytes: bytes = b"weights") -> Path:
    """A tiny stand-in for an `.mlpackage` folder (no coremltools conversion)."""
    package = parent / name
    model_dir = package / "Data" / "com.apple.CoreML"
    model_dir.mkdir(parents=True)
    (package / "Manifest.json").write_text('{"fileFormatVersion": "1.0.0"}\n')
    (model_dir / "model.mlmodel").write_bytes(model_bytes)
    return package


def make_entries(sources: Path, stage_count: int) -> dict[str, Path]:
    """Sources for a packages folder (stand-in packages, tokenizer files) as separate Snakemake outputs leave them."""
    sources.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name in ["TextEncoder", "TextEncoder2", "VAEDecoder", "MultiModalDiffusionTransformerConditioning"]:
        entries[f"{name}.mlpackage"] = make_package(sources / name, f"{name}.mlpackage", name.encode())
    for index in range(stage_count):
        name = f"{STAGE}{index}.mlpackage"
        entries[name] = make_package(sources / f"blocks-{index}", "package.mlpackage", f"stage{index}".encode())
        # Snakemake's directory() marker must never reach the app's folder.
        (entries[name] / ".snakemake_timestamp").write_text("")
    for name, text in [("vocab.json", '{"a": 0}\n'), ("merges.txt", "#version: 0.2\na b\n")]:
        entries[name] = sources / name
        entries[name].write_text(text)
    return entries


def linear_model(width: int, version: int = 18):
    """A one-linear fp16 ML program converted for iOS<version>, width x width random weights (seeded by width)."""
    import coremltools as ct
    import numpy as np
    from coremltools.converters.mil import Builder as mb

    target = getattr(ct.target, f"iOS{version}")
    weight = np.random.default_rng(width).standard_normal((width, width)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec((1, width))], opset_version=target)
    def linear(x):
        return mb.linear(x=x, weight=weight)

    return ct.convert(
        linear, minimum_deployment_target=target, convert_to="mlprogram", compute_precision=ct.precision.FLOAT16
    )


def recorded_profile(stderr=(), ne_pct=95.0, predict_s=0.1, cpu_only_predict_s=0.5, **more) -> dict:
    """A profile-on-device record as the child writes it: placement, timings, the classified stderr."""
    from sd3coreml.sweep.device_verdict import classified_stderr

    return {
        "placement": {"pct": {"neural_engine": ne_pct, "gpu": 0.0, "cpu": 100 - ne_pct}, "weighted_by": "cost"},
        "first_load_s": 4.0,
        "predict_s": predict_s,
        "cpu_only_predict_s": cpu_only_predict_s,
        "step": {"load_s": 0.5, "predict_s": predict_s, "unload_s": 0.01},
        "stderr": classified_stderr(list(stderr)),
        **more,
    }
