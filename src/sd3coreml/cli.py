"""Command line: `python -m sd3coreml <step> ...`, one subcommand per pipeline step.

Every step the Snakemake rules run is here, so each can run by hand. Step modules that
own their CLI expose `register_cli(subparsers)`; the conversion steps are declared below.
Heavy libraries (torch, coremltools) are imported only when a step runs, so `--help` is fast.
"""

import argparse
import importlib
import sys
from pathlib import Path

from sd3coreml.disk import MIL_WRITER_FAILED, OUT_OF_ROOM, out_of_room_message, temporary_weights_message
from sd3coreml.errors import PipelineError
from sd3coreml.frameworks import skip_unused_frameworks

# Step -> the module whose register_cli() adds it. A run imports only its own step's module
# (code_closure.py names a job's code by what it loads); --help imports them all.
STEP_MODULES = {
    "synthetic-transformer": "sd3coreml.synthetic",
    "synthetic-components": "sd3coreml.synthetic",
    "assemble-folder": "sd3coreml.folder",
    "verify-folder": "sd3coreml.folder_check",
    "compile-package": "sd3coreml.compile",
    "compile-folder": "sd3coreml.compile",
    "copy-tokenizer": "sd3coreml.tokenizer",
    "bench-report": "sd3coreml.bench_report",
    "download-file": "sd3coreml.download",
    "download-snapshot": "sd3coreml.download",
    "normalize-transformer": "sd3coreml.normalize",
    "verify-package": "sd3coreml.fidelity",
    "fidelity-report": "sd3coreml.fidelity_report",
    "end-to-end": "sd3coreml.end_to_end",
    "sweep-summary": "sd3coreml.sweep_summary",
    "cleanup": "sd3coreml.cleanup",
    "profile-on-device": "sd3coreml.device_profile",
    "release-check": "sd3coreml.release_check",
    "mac-selfcheck": "sd3coreml.mac_selfcheck",
}


def convert_conditioning(args):
    skip_unused_frameworks("sklearn", "transformers")
    from sd3coreml.mmdit_packages import convert_conditioning

    convert_conditioning(args.weights, args.config, args.target, args.out)


def convert_input_stage(args):
    skip_unused_frameworks("sklearn", "transformers")
    from sd3coreml.mmdit_packages import convert_input_stage

    convert_input_stage(args.weights, args.config, tuple(args.latent), args.target, args.out)


def convert_block_range(args):
    skip_unused_frameworks("sklearn", "transformers")
    from sd3coreml.mmdit_packages import convert_block_range

    convert_block_range(args.weights, args.config, args.start, args.end, tuple(args.latent), args.target, args.out)


def convert_text_encoder(args):
    skip_unused_frameworks("sklearn")
    from sd3coreml.text_encoder import convert_text_encoder

    convert_text_encoder(args.encoder, args.target, args.out)


def convert_vae_decoder(args):
    skip_unused_frameworks("sklearn", "transformers")
    from sd3coreml.vae import convert_vae_decoder

    convert_vae_decoder(args.vae, tuple(args.latent), args.target, args.out)


def compress_package(args):
    # Palettes per grouped channel need scikit-learn's k-means for groups under 10,000 weights,
    # and scikit-learn fails to import with torch marked absent.
    grouped = args.granularity == "per_grouped_channel"
    skip_unused_frameworks("transformers", *([] if grouped else ["torch", "sklearn"]))
    from sd3coreml.compress import compress_package

    sizes = {"group_size": args.group_size, "block_size": args.block_size}
    compress_package(args.package, args.out, args.mode, args.nbits, args.granularity, **sizes)


def add_transformer_args(parser, latent: bool = True):
    parser.add_argument("--weights", type=Path, required=True, help="diffusers-format transformer .safetensors")
    parser.add_argument("--config", type=Path, required=True, help="the transformer config JSON for the weights")
    if latent:
        parser.add_argument("--latent", type=int, nargs=2, required=True, metavar=("H", "W"))


def add_output_args(parser):
    parser.add_argument("--target", default="iOS18", help="coremltools minimum deployment target")
    parser.add_argument("--out", type=Path, required=True, help="the .mlpackage to write")


def register_conversion_steps(subparsers):
    step = subparsers.add_parser("convert-conditioning", help="MMDiT Conditioning: time_text_embed")
    add_transformer_args(step, latent=False)
    add_output_args(step)
    step.set_defaults(func=convert_conditioning)

    step = subparsers.add_parser("convert-input-stage", help="MMDiT Stage0: patch and text embedding")
    add_transformer_args(step)
    add_output_args(step)
    step.set_defaults(func=convert_input_stage)

    step = subparsers.add_parser("convert-block-range", help="MMDiT joint blocks [start, end), head if last")
    add_transformer_args(step)
    step.add_argument("--start", type=int, required=True)
    step.add_argument("--end", type=int, required=True)
    add_output_args(step)
    step.set_defaults(func=convert_block_range)

    step = subparsers.add_parser("convert-text-encoder", help="a CLIP text encoder folder")
    step.add_argument("--encoder", type=Path, required=True, help="e.g. COMPONENTS/text_encoder")
    add_output_args(step)
    step.set_defaults(func=convert_text_encoder)

    step = subparsers.add_parser("convert-vae-decoder", help="the SD3 VAE decoder")
    step.add_argument("--vae", type=Path, required=True, help="e.g. COMPONENTS/vae")
    step.add_argument("--latent", type=int, nargs=2, required=True, metavar=("H", "W"))
    add_output_args(step)
    step.set_defaults(func=convert_vae_decoder)

    step = subparsers.add_parser("compress-package", help="int8/int4 quantize or palettize a saved package")
    step.add_argument("--package", type=Path, required=True)
    step.add_argument("--out", type=Path, required=True)
    step.add_argument("--mode", choices=["linear_symmetric", "palettize"], required=True)
    step.add_argument("--nbits", type=int, default=8)
    step.add_argument(
        "--granularity",
        default="per_channel",
        choices=["per_tensor", "per_channel", "per_block", "per_grouped_channel"],
    )
    step.add_argument("--group-size", type=int, help="output channels per palette (per_grouped_channel)")
    step.add_argument("--block-size", type=int, help="weights per scale along the input axis (per_block)")
    step.set_defaults(func=compress_package)


def build_parser(step: str | None = None) -> argparse.ArgumentParser:
    """The parser for `step` (its module's steps only), or for every step when it is none of them."""
    parser = argparse.ArgumentParser(prog="python -m sd3coreml", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    register_conversion_steps(subparsers)
    if step not in subparsers.choices:
        modules = [STEP_MODULES[step]] if step in STEP_MODULES else STEP_MODULES.values()
        for name in dict.fromkeys(modules):
            importlib.import_module(name).register_cli(subparsers)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    step = next((word for word in argv if not word.startswith("-")), None)
    args = build_parser(step).parse_args(argv)
    try:
        args.func(args)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        # A full disk is the host's state, not a bug: one line, like a PipelineError.
        if error.errno not in OUT_OF_ROOM:
            raise
        written = getattr(args, "out", None) or getattr(args, "out_dir", None)
        where = str(written) if written else f"python -m sd3coreml {args.step}"
        print(f"error: {out_of_room_message(error, where)}", file=sys.stderr)
        return 1
    except RuntimeError as error:
        if not str(error).startswith(MIL_WRITER_FAILED):
            raise
        print(f"error: {temporary_weights_message(error)}", file=sys.stderr)
        return 1
    return 0
