"""The pinned toolchain: installed versions and a fingerprint for rule params.

Snakemake cannot see a software environment without conda, so every conversion rule
carries this fingerprint in its params: upgrading coremltools or torch reruns conversions.
"""

import hashlib
import json
import platform
from importlib import metadata

PINNED_PACKAGES = (
    "torch",
    "coremltools",
    "numpy",
    "diffusers",
    "transformers",
    "safetensors",
    "huggingface_hub",
    "scikit-learn",
    "kmeans1d",
    "snakemake",
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
