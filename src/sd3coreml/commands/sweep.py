"""`sweep-summary`, `sweep-fp16-chain`, `sweep-end-to-end`, `profile-on-device`, `bench-report`: what layouts cost and where they run."""

from pathlib import Path

from sd3coreml.frameworks import skip_unused_frameworks


def sweep_summary(args) -> None:
    skip_unused_frameworks("torch", "sklearn", "transformers")
    from sd3coreml.step_spec import read_spec
    from sd3coreml.sweep.summary import write_summary

    write_summary(read_spec(args.spec, "sweep-summary"), args.out_dir)


def sweep_fp16_chain(args) -> None:
    skip_unused_frameworks("torch", "sklearn", "transformers")
    from sd3coreml.step_spec import read_spec
    from sd3coreml.verify.end_to_end.compression_check import write_fp16_chain

    write_fp16_chain(read_spec(args.spec, "sweep-fp16-chain"), args.out)


def sweep_end_to_end(args) -> None:
    skip_unused_frameworks("torch", "sklearn", "transformers")
    from sd3coreml.atomic import write_json
    from sd3coreml.step_spec import read_spec
    from sd3coreml.verify.end_to_end.compression_check import compression_check

    write_json(args.out, compression_check(read_spec(args.spec, "sweep-end-to-end"), args.fp16_chain))


def profile_on_device(args) -> None:
    from sd3coreml.atomic import write_json
    from sd3coreml.sweep.device_profile import isolated_profile

    profile = isolated_profile(args.package, args.runs)
    write_json(args.out, profile)


def bench_report(args) -> None:
    from sd3coreml.sweep.bench_report import write_report

    write_report(args.root, args.folder, args.wall, args.command, args.out, args.notes)


def register_cli(subparsers) -> None:
    step = subparsers.add_parser("sweep-summary", help="summarise a stage-layout sweep (table, CSV, plot)")
    step.add_argument("--spec", required=True, help="the sweep plan (JSON file, or - for stdin) the sweep_summary rule writes")
    step.add_argument("--out-dir", type=Path, required=True)
    step.set_defaults(func=sweep_summary)

    step = subparsers.add_parser("sweep-fp16-chain", help="the app's chain with fp16 MMDiT packages, once per sweep")
    step.add_argument("--spec", required=True, help="the chain's JSON spec (file, or - for stdin)")
    step.add_argument("--out", type=Path, required=True, help="the safetensors file of its judged values to write")
    step.set_defaults(func=sweep_fp16_chain)

    step = subparsers.add_parser("sweep-end-to-end", help="a compression mode's MMDiT against fp16, through the app's chain")
    step.add_argument("--spec", required=True, help="the check's JSON spec (file, or - for stdin)")
    step.add_argument("--fp16-chain", type=Path, required=True, help="the sweep-fp16-chain file to compare with")
    step.add_argument("--out", type=Path, required=True, help="the figures JSON to write")
    step.set_defaults(func=sweep_end_to_end)

    step = subparsers.add_parser("profile-on-device", help="Core ML placement, timings and verdict inputs (macOS)")
    step.add_argument("--package", type=Path, required=True)
    step.add_argument("--out", type=Path, required=True, help="the profile JSON to write")
    step.add_argument("--runs", type=int, default=5)
    step.set_defaults(func=profile_on_device)

    step = subparsers.add_parser("bench-report", help="tabulate a build's benchmark files into Markdown")
    step.add_argument("--root", type=Path, required=True, help="the build's output_root")
    step.add_argument("--folder", type=Path, required=True, help="the packages folder built")
    step.add_argument("--wall", type=float, required=True, help="the build's wall-clock seconds")
    step.add_argument("--command", required=True, help="the command that was timed")
    step.add_argument("--out", type=Path, required=True)
    step.add_argument("--notes", type=Path, help="hand-written Markdown to include after the targets")
    step.set_defaults(func=bench_report)
