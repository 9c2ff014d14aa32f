"""Fidelity: run packages on seeded inputs and compare them with their PyTorch reference.

PSNR is measured as Apple's converter measures it: peak = max |reference|. On Linux the
packages run in `mil_executor` (coremltools' op semantics, op by op); on a macOS new enough
for the package they also run in Core ML itself (CPU_AND_NE, in a child process) and both
figures are recorded. A measurement is written
for every package; thresholds are applied by the report, so changing a bar re-judges
without re-measuring.
"""

import json
import math
from pathlib import Path

import numpy as np

from sd3coreml.atomic import written_atomically


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


def precision_class(package: Path) -> str:
    """`blocks0-4.int8_linear_symmetric_per_channel.mlpackage` -> `int8`, and so on."""
    slug = Path(package).name.removesuffix(".mlpackage").rsplit(".", 1)[-1]
    if slug.startswith("palettize"):
        return "palettized"
    if slug.startswith("int"):
        return slug.split("_", 1)[0]
    return "fp16"


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
    from sd3coreml.mil_executor import run_package

    record = {
        "package": str(package),
        "precision": precision_class(package),
        "executor": compare_outputs(run_package(Path(package), check.inputs), check.reference),
    }
    record["coreml"] = coreml_figures(Path(package), check, coreml_compute_units)
    return record


def coreml_figures(package: Path, check, compute_units: str = "CPU_AND_NE"):
    """Core ML's own figures (macOS 15 for iOS18 packages), in a child process; else why there are none.

    `needs macOS`/`needs macOS 15` where Core ML cannot load the package, `{"failed": ...}`
    where its child died or hung (the Neural Engine can kill a process), else PSNR per output.
    """
    from sd3coreml.coreml_runtime import isolated_predict

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
    with written_atomically(Path(out)) as temporary:
        temporary.write_text(json.dumps(measurement, indent=2, sort_keys=True) + "\n")


def build_check(args):
    from sd3coreml import fidelity_checks as checks

    if args.kind == "conditioning":
        return checks.conditioning_check(args.weights, args.config, args.seed)
    if args.kind == "input-stage":
        return checks.input_stage_check(args.weights, args.config, tuple(args.latent), args.seed)
    if args.kind == "block-range":
        return checks.block_range_check(args.weights, args.config, args.start, args.end, tuple(args.latent), args.seed)
    if args.kind == "text-encoder":
        return checks.text_encoder_check(args.source, args.seed)
    return checks.vae_decoder_check(args.source, tuple(args.latent), args.seed)


def verify_packages_command(args) -> None:
    from sd3coreml.frameworks import skip_unused_frameworks

    # transformers only for the CLIP reference: its import is seconds of every other check.
    skip_unused_frameworks("sklearn", *([] if args.kind == "text-encoder" else ["transformers"]))
    measure_packages(args.packages, build_check(args), args.seed, args.out, args.coreml_compute_units)


def register_cli(subparsers) -> None:
    step = subparsers.add_parser("verify-package", help="measure packages against their PyTorch reference")
    step.add_argument(
        "--kind", required=True, choices=["conditioning", "input-stage", "block-range", "text-encoder", "vae-decoder"]
    )
    step.add_argument(
        "--packages", type=Path, nargs="+", required=True, help="the fp16 package and its compressed twin"
    )
    step.add_argument("--weights", type=Path, help="transformer .safetensors (MMDiT kinds)")
    step.add_argument("--config", type=Path, help="transformer config JSON (MMDiT kinds)")
    step.add_argument("--source", type=Path, help="the component folder (text encoder or vae)")
    step.add_argument("--start", type=int)
    step.add_argument("--end", type=int)
    step.add_argument("--latent", type=int, nargs=2, metavar=("H", "W"))
    step.add_argument("--seed", type=int, default=0)
    step.add_argument("--out", type=Path, required=True, help="the measurement JSON to write")
    step.add_argument("--coreml-compute-units", default="CPU_AND_NE", help="Core ML's own prediction (macOS)")
    step.set_defaults(func=verify_packages_command)
