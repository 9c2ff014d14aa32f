"""The pinned toolchain: installed versions, a fingerprint for rule params, and its record.

Snakemake cannot see a software environment without conda, so every conversion rule
carries this fingerprint in its params: upgrading coremltools or torch reruns conversions.

The fingerprint is taken over the releases only (`rerun_versions`): a local version label
(`torch 2.13.0+cpu`, the CPU wheel the team installs, against a Mac's `torch 2.13.0`) and
Python's patch level (3.11.7 against 3.11.2) leave it unchanged, so a Mac working over
Linux-built results does not reconvert them. Another release of any pinned package, or
another Python minor version, still changes it. Python's patch level changes no output:
CPython's bug-fix releases keep 3.11's bytecode and language, every figure and byte comes from
the same compiled wheels (torch, numpy, coremltools), and the demo's two packages folders built
with every job under Python 3.11.2 matched those built under 3.11.7 byte for byte, fidelity
measurements included (docs/MAC_AND_CLUSTER.md).

A folder's manifest keeps exact versions: those of the toolchain record (`record_path`), which
the first run under a fingerprint writes and every later run under it reads, so a folder
records the toolchain that built its packages, not the host that happened to assemble it.
"""

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from sd3coreml.atomic import write_json

# How long a tool's version or lookup question may take before it counts as unavailable.
TOOL_TIMEOUT_SECONDS = 60
PINNED_PACKAGES = (
    "torch",
    "coremltools",
    "numpy",
    "diffusers",
    "transformers",
    "safetensors",
    "huggingface_hub",
    "scikit-learn",
    "snakemake",
    # Its CLIP BPE file becomes the synthetic tokenizer files.
    "open_clip_torch",
)


def installed_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PINNED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def rerun_versions(versions: dict[str, str]) -> dict[str, str]:
    """What of the toolchain reruns jobs: each release without its local label (`2.13.0+cpu` ->
    `2.13.0`, PEP 440's local version), Python as major.minor (`3.11.7` -> `3.11`)."""
    releases = {name: version.split("+", 1)[0] for name, version in versions.items()}
    if "python" in releases:
        releases["python"] = ".".join(releases["python"].split(".")[:2])
    return releases


def fingerprint(versions: dict[str, str]) -> str:
    """The rule params' toolchain value: a hash of `rerun_versions`."""
    return hashlib.sha256(json.dumps(rerun_versions(versions), sort_keys=True).encode()).hexdigest()[:16]


def record_path(root: str, versions: dict[str, str]) -> str:
    """Where the exact versions of the toolchain that built under this fingerprint are kept
    (under reports/, which cleanup may prune): named by the fingerprint, so a toolchain that
    only differs in what the fingerprint leaves out finds the first one's record."""
    return f"{root}/reports/toolchain/{fingerprint(versions)}.json"


def write_record(path, versions: dict[str, str], log=None) -> None:
    """The record at `path`; `log` (the rule's) says which versions and where."""
    write_json(Path(path), versions)
    if log is not None:
        Path(log).write_text(f"{path}: {json.dumps(versions, sort_keys=True)}\n", encoding="utf-8")


def compiler_versions(program: list[str]) -> dict[str, str]:
    """The compiler's own `version` answer and, for `xcrun` compilers, Xcode's version."""
    versions = {"compiler": _answer([*program, "version"])}
    if program[0] == "xcrun":
        versions["xcode"] = _answer(["xcodebuild", "-version"])
    return versions


def _answer(command: list[str]) -> str:
    """A tool's output on one line, or `unavailable` when it cannot run here.

    Its stdout, or its stderr where stdout is empty: `coremlcompiler version` may print to
    stderr (mac-selfcheck records both apart). Never both: xcodebuild writes plug-in warnings
    with pids and times to stderr, which would make a manifest differ from run to run.
    """
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = " ".join(result.stdout.split()) or " ".join(result.stderr.split())
    return text if result.returncode == 0 and text else "unavailable"
