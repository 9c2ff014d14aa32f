"""`verify-package`, `fidelity-report`, `end-to-end`: every package against its PyTorch module, judged;
`verify-attention`: a split-attention package against its joint twin."""

import json
from pathlib import Path

from sd3coreml.errors import PipelineError
from sd3coreml.frameworks import skip_unused_frameworks

# What package_checks.build_check checks; named here, where --help needs them without importing torch.
KINDS = ("conditioning", "input-stage", "block-range", "text-encoder", "vae-decoder")
COMPUTE_UNITS_HELP = "what Core ML's own predictions run on (macOS)"
# verify/measure.py's RUNNERS, spelled here for the same reason.
RUNNERS = ("executor", "coreml")


def verify_package(args) -> None:
    # transformers only for the CLIP reference: its import is seconds of every other check.
    skip_unused_frameworks("sklearn", *([] if args.kind == "text-encoder" else ["transformers"]))
    from sd3coreml.verify.measure import measure_packages
    from sd3coreml.verify.package_checks import build_check

    check = build_check(args.kind, args.seed, args.weights, args.config, args.source, args.start, args.end, args.latent)
    measure_packages(args.packages, check, args.seed, args.out, args.runner, args.coreml_compute_units)


def fidelity_report(args) -> None:
    from sd3coreml.verify.report import write_report_from_spec

    write_report_from_spec(args.spec, args.out_json, args.out_md)


def verify_attention(args) -> None:
    skip_unused_frameworks("sklearn", "transformers")
    from sd3coreml.verify.attention_check import check_against_joint

    record = check_against_joint(args.package, args.joint, args.seed, args.min_psnr_db, args.out)
    print(json.dumps(record, indent=2))


def end_to_end(args) -> None:
    skip_unused_frameworks("sklearn")
    from sd3coreml.atomic import write_json
    from sd3coreml.verify.end_to_end.check import end_to_end_check, write_side_by_side

    coreml = (args.coreml_compute_units, args.enforce_coreml == "yes") if args.runner == "coreml" else None
    check = end_to_end_check(args.folder, args.weights, args.config, args.components, args.steps, args.seed,
                             args.min_psnr_db, args.prompt, coreml, shift=args.shift)  # fmt: skip
    write_side_by_side(check.package_image, check.reference_image, args.out_png)
    write_json(args.out_json, check.report)
    print(json.dumps(check.report, indent=2))
    if check.failure:
        raise PipelineError(check.failure)


def register_cli(subparsers) -> None:
    step = subparsers.add_parser("verify-package", help="measure packages against their PyTorch reference")
    step.add_argument("--kind", required=True, choices=KINDS)
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
    step.add_argument(
        "--runner", choices=RUNNERS, default="executor",
        help="what predicts: the MIL executor (any host) or Core ML itself (macOS); each its own measurement",
    )  # fmt: skip
    step.add_argument("--coreml-compute-units", default="CPU_AND_NE", help=COMPUTE_UNITS_HELP)
    step.set_defaults(func=verify_package)

    step = subparsers.add_parser("fidelity-report", help="judge a build's fidelity measurements")
    step.add_argument(
        "--spec", required=True, metavar="JSON",
        help='a JSON file, or - for stdin: {"measurements": {ENTRY: JSON}, "thresholds": {"fp16": 60, ...},'
        ' "coreml": {"min_psnr_db": 30, "enforce": false}}',
    )  # fmt: skip
    step.add_argument("--out-json", type=Path, required=True)
    step.add_argument("--out-md", type=Path, required=True)
    step.set_defaults(func=fidelity_report)

    step = subparsers.add_parser("verify-attention", help="a split-attention block range against its joint twin")
    step.add_argument("--package", type=Path, required=True, help="the block range package split per head")
    step.add_argument("--joint", type=Path, required=True, help="the same block range with joint attention")
    step.add_argument("--seed", type=int, default=0)
    step.add_argument(
        "--min-psnr-db", type=float, required=True, help="the bar per output (fidelity.attention_min_psnr_db)"
    )
    step.add_argument("--out", type=Path, required=True, help="the figures JSON to write")
    step.set_defaults(func=verify_attention)

    step = subparsers.add_parser("end-to-end", help="a packages folder against stock diffusers, prompt to image")
    step.add_argument("--folder", type=Path, required=True, help="a built packages folder")
    step.add_argument("--weights", type=Path, required=True)
    step.add_argument("--config", type=Path, required=True)
    step.add_argument("--components", type=Path, required=True)
    step.add_argument("--steps", type=int, required=True, choices=[2, 4])
    step.add_argument("--shift", type=float, required=True, help="the app's timestep shift (its model's 3.0)")
    step.add_argument("--seed", type=int, default=0)
    step.add_argument("--min-psnr-db", type=float, default=30.0, help="the bar of the runner's chain")
    step.add_argument("--prompt", required=True, help="the prompt, tokenized as the app tokenizes it")
    step.add_argument("--out-json", type=Path, required=True)
    step.add_argument("--out-png", type=Path, required=True)
    step.add_argument(
        "--runner", choices=RUNNERS, default="executor",
        help="what runs the chain: the MIL executor (any host) or Core ML itself (macOS); each its own report",
    )  # fmt: skip
    step.add_argument("--coreml-compute-units", default="CPU_AND_NE", help=COMPUTE_UNITS_HELP)
    step.add_argument(
        "--enforce-coreml", choices=("yes", "no"), default="no", help="whether a Core ML chain under its bar fails the check"
    )
    step.set_defaults(func=end_to_end)
