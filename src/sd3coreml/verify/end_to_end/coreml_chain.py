"""The app's whole chain in Core ML itself: the folder run as the app runs it, in one child process.

The chain runs in `isolated`'s child, so a crash or a hang of Core ML is recorded, never fatal.
In it each package is compiled once (`coreml_runtime.CompiledPackages`) and loaded for every
prediction: a 4-step chain over a seven-stage folder is eleven compiles (two text encoders,
Conditioning, seven stages, the VAE decoder) and 35 loads, not 35 compiles. Off macOS, or on a
macOS older than the packages need, it says why instead (`coreml_runtime.unavailable_reason`).
"""

from pathlib import Path

from sd3coreml.verify.coreml_runtime import spec_version, unavailable_reason
from sd3coreml.verify.isolated import describe, run_isolated

CHAIN_TIMEOUT_S = 3600


def coreml_chain(folder: str, ids: dict, noise, schedule, joint_attention_dim: int, compute_units: str) -> dict:
    """In the child: the app's whole chain (text encoders, Conditioning, stages, VAE) in Core ML.

    `schedule` is the app's sampler, as `app_chain.run_app_chain` takes it."""
    from sd3coreml.verify.coreml_runtime import CompiledPackages
    from sd3coreml.verify.end_to_end.app_chain import run_app_chain

    packages = CompiledPackages(compute_units)
    return run_app_chain(Path(folder), ids, noise, schedule, joint_attention_dim, packages.predict).values


def isolated_chain(folder: Path, ids: dict, noise, schedule, joint_attention_dim: int, compute_units: str):
    """The chain's record values from Core ML, or why there are none (as `coreml_runtime.isolated_predict`)."""
    reason = unavailable_reason(spec_version(Path(folder) / "TextEncoder.mlpackage"))
    if reason is not None:
        return reason
    kwargs = {"folder": str(folder), "ids": ids, "noise": noise, "schedule": schedule,
              "joint_attention_dim": joint_attention_dim, "compute_units": compute_units}  # fmt: skip
    result = run_isolated("sd3coreml.verify.end_to_end.coreml_chain:coreml_chain", kwargs, CHAIN_TIMEOUT_S)
    return result.value if result.ok else {"failed": describe(result.failure), **result.failure}
