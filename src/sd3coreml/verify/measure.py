"""Fidelity: run packages on seeded inputs and compare them with their PyTorch reference.

PSNR is measured as Apple's converter measures it: peak = max |reference|. Two runners, each
its own measurement file (`pipeline/artifacts.py`): the MIL executor (`mil_executor`,
coremltools' op semantics op by op, on any host) and, on a macOS new enough for the package,
Core ML itself, in a child process, under the compute units the config names; a Core ML
measurement records the units it ran under. A measurement is written for every package;
thresholds are applied by the report, so changing a bar re-judges without re-measuring.
"""

import math
from pathlib import Path

import numpy as np

from sd3coreml.atomic import write_json
from sd3coreml.pipeline.artifacts import setting_of_package


def psnr(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB, peak = max |reference|; inf when they are equal."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"shape {candidate.shape} where the reference has {reference.shape}")
    mse = float(np.mean((reference - candidate) ** 2))
    if mse == 0.0:
        return math.inf
    peak = float(np.max(np.abs(reference)))
    return -math.inf if peak == 0.0 else 20.0 * math.log10(peak / math.sqrt(mse))


def json_figure(value: float):
    return value if math.isfinite(value) else str(value)


def compare_outputs(outputs: dict, reference: dict) -> dict:
    return {
        name: {
            "psnr_db": json_figure(round(psnr(expected, outputs[name]), 3)),
            "max_abs_error": float(np.max(np.abs(outputs[name].astype(np.float64) - expected))),
            "reference_max_abs": float(np.max(np.abs(expected))),
        }
        for name, expected in reference.items()
    }


RUNNERS = ("executor", "coreml")


def measure_package(package: Path, check, runner: str = "executor", compute_units: str = "CPU_AND_NE") -> dict:
    """One package's figures from one runner: `executor`, or `coreml` (with the units it ran
    under, None where Core ML did not run)."""
    record = {"package": str(package), "precision": setting_of_package(package).precision}
    if runner == "executor":
        from sd3coreml.verify.mil_executor import run_package

        return {**record, "executor": compare_outputs(run_package(Path(package), check.inputs), check.reference)}
    figures = coreml_figures(Path(package), check, compute_units)
    return {**record, "coreml": figures, "compute_units": None if isinstance(figures, str) else compute_units}


def coreml_figures(package: Path, check, compute_units: str = "CPU_AND_NE"):
    """Core ML's own figures (macOS 15 for iOS18 packages), in a child process; else why there are none.

    `needs macOS`/`needs macOS 15` where Core ML cannot load the package, `{"failed": ...}`
    where its child died or hung (the Neural Engine can kill a process), else PSNR per output.
    """
    from sd3coreml.verify.coreml_runtime import isolated_predict

    outcome = isolated_predict(package, check.inputs, compute_units)
    if isinstance(outcome, str) or "failed" in outcome:
        return outcome
    return compare_outputs(outcome, check.reference)


def measure_packages(
    packages: list[Path], check, seed: int, out: Path, runner: str = "executor", compute_units: str = "CPU_AND_NE"
) -> None:
    """Measure each package against one check with one runner and write the figures as JSON."""
    if runner not in RUNNERS:
        raise ValueError(f"runner {runner!r}: expected one of {', '.join(RUNNERS)}")
    measurement = {
        "reference": check.description,
        "seed": seed,
        "runner": runner,
        **({"compute_units": compute_units} if runner == "coreml" else {}),
        "packages": [measure_package(package, check, runner, compute_units) for package in packages],
    }
    write_json(Path(out), measurement)
