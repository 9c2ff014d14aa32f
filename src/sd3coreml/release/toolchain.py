"""The pinned toolchain: installed versions and a fingerprint for rule params.

Snakemake cannot see a software environment without conda, so every conversion rule
carries this fingerprint in its params: upgrading coremltools or torch reruns conversions.
"""

import hashlib
import json
import platform
import subprocess
from importlib import metadata

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


def fingerprint(versions: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:16]


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
