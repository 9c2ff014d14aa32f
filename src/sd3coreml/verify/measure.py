"""Fidelity: run packages on seeded inputs and compare them with their PyTorch reference.

PSNR is measured as Apple's converter measures it: peak = max |reference|. On Linux the
packages run in `mil_executor` (coremltools' op semantics, op by op); on a macOS new enough
for the package they also run in Core ML itself (CPU_AND_NE, in a child process) and both
figures are recorded. A measurement is written
for every package; thresholds are applied by the report, so changing a bar re-judges
without re-measuring.
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


def measure_package(package: Path, check, coreml_compute_units: str = "CPU_AND_NE") -> dict:
    from sd3coreml.verify.mil_executor import run_package

    record = {
        "package": str(package),
        "precision": setting_of_package(package).precision,
        "executor": compare_outputs(run_package(Path(package), check.inputs), check.reference),
    }
    record["coreml"] = coreml_figures(Path(package), check, coreml_compute_units)
    return record


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
    packages: list[Path], check, seed: int, out: Path, coreml_compute_units: str = "CPU_AND_NE"
) -> None:
    """Measure each package against one check and write the figures as JSON."""
    measurement = {
        "reference": check.description,
        "seed": seed,
        "packages": [measure_package(package, check, coreml_compute_units) for package in packages],
    }
    write_json(Path(out), measurement)
