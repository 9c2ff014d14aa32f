"""The conversion steps: PyTorch pieces to fp16 packages, and their compression.

Each step imports its library code inside its function (code_closure.py names a job's code
by those imports), after marking the frameworks it does not use as absent: coremltools
imports torch, scikit-learn and transformers only to learn whether they exist, seconds of
every job.
"""

import argparse
from pathlib import Path

from sd3coreml.errors import PipelineError
from sd3coreml.frameworks import skip_unused_frameworks


def refuse_attention(args, entry: str) -> None:
    """The pieces without attention take no --attention: one line, before any work."""
    if args.attention is not None:
        from sd3coreml.stages import NO_ATTENTION

        raise PipelineError(
            f"--attention {args.attention}: {entry} is {NO_ATTENTION[entry]} and holds no attention; "
            "only convert-block-range takes --attention"
        )


def convert_conditioning(args):
    from sd3coreml.contract import CONDITIONING

    refuse_attention(args, CONDITIONING)
    skip_unused_frameworks("sklearn", "transformers")
    from sd3coreml.convert.mmdit import convert_conditioning

    convert_conditioning(args.weights, args.config, args.target, args.out)


def convert_input_stage(args):
    from sd3coreml.contract import STAGE

    refuse_attention(args, STAGE.format(index=0))
    skip_unused_frameworks("sklearn", "transformers")
    from sd3coreml.convert.mmdit import convert_input_stage

    convert_input_stage(args.weights, args.config, tuple(args.latent), args.target, args.out)


def convert_block_range(args):
    skip_unused_frameworks("sklearn", "transformers")
    from sd3coreml.convert.mmdit import convert_block_range

    convert_block_range(args.weights, args.config, args.start, args.end, tuple(args.latent), args.target, args.out,
                        args.attention)  # fmt: skip


def convert_text_encoder(args):
    skip_unused_frameworks("sklearn")
    from sd3coreml.convert.text_encoder import convert_text_encoder

    convert_text_encoder(args.encoder, args.target, args.out)


def convert_vae_decoder(args):
    skip_unused_frameworks("sklearn", "transformers")
    from sd3coreml.convert.vae import convert_vae_decoder

    convert_vae_decoder(args.vae, tuple(args.latent), args.target, args.out)


def compress_package(args):
    # A recipe's content is read from its file, which must hold what the slug names.
    setting = args.compression.with_recipe_file(args.recipe)
    # Palettes per grouped channel need scikit-learn's k-means for groups under 10,000 weights,
    # and scikit-learn fails to import with torch marked absent.
    skip_unused_frameworks("transformers", *([] if setting.uses_grouped_palettes else ["torch", "sklearn"]))
    from sd3coreml.compress.weights import compress_package

    ranges = None
    if args.activation_ranges is not None:
        from sd3coreml.sensitivity.activation_ranges import read_ranges

        ranges = read_ranges(args.activation_ranges)
    compress_package(args.package, args.out, setting, workers=args.threads, activation_ranges=ranges)


def compression_setting(slug: str):
    """argparse's type for --compression: the setting a slug names, or a usage error saying the grammar."""
    from sd3coreml.compress.settings import NONE, CompressionSetting

    try:
        setting = CompressionSetting.from_slug(slug)
    except PipelineError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if setting.mode == NONE:
        raise argparse.ArgumentTypeError(f"{slug!r} compresses nothing; name a compressed setting")
    return setting


def add_transformer_args(parser, latent: bool = True):
    parser.add_argument("--weights", type=Path, required=True, help="diffusers-format transformer .safetensors")
    parser.add_argument("--config", type=Path, required=True, help="the transformer config JSON for the weights")
    if latent:
        parser.add_argument("--latent", type=int, nargs=2, required=True, metavar=("H", "W"))


def add_output_args(parser):
    parser.add_argument("--target", default="iOS18", help="coremltools minimum deployment target")
    parser.add_argument("--out", type=Path, required=True, help="the .mlpackage to write")


def register_cli(subparsers) -> None:
    # Every step of this group runs this (code_closure.py counts its imports in each step's code):
    # importing compress/settings.py here would make an edit to it rerun every conversion.
    from sd3coreml.stages import ATTENTIONS, JOINT

    step = subparsers.add_parser("convert-conditioning", help="MMDiT Conditioning: time_text_embed")
    add_transformer_args(step, latent=False)
    add_output_args(step)
    # Accepted only to be refused in one line: Conditioning holds no attention.
    step.add_argument("--attention", help=argparse.SUPPRESS)
    step.set_defaults(func=convert_conditioning)

    step = subparsers.add_parser("convert-input-stage", help="MMDiT Stage0: patch and text embedding")
    add_transformer_args(step)
    add_output_args(step)
    step.add_argument("--attention", help=argparse.SUPPRESS)
    step.set_defaults(func=convert_input_stage)

    step = subparsers.add_parser("convert-block-range", help="MMDiT joint blocks [start, end), head if last")
    add_transformer_args(step)
    step.add_argument("--start", type=int, required=True)
    step.add_argument("--end", type=int, required=True)
    step.add_argument(
        "--attention", choices=ATTENTIONS, default=JOINT,
        help="joint: diffusers' attention as it is; split_heads: one head at a time (docs/ATTENTION.md)",
    )  # fmt: skip
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

    step = subparsers.add_parser(
        "compress-package", help="int8/int4 quantize or palettize a saved package, uniformly or by a recipe"
    )
    step.add_argument("--package", type=Path, required=True)
    step.add_argument("--out", type=Path, required=True)
    step.add_argument(
        "--compression", type=compression_setting, required=True, metavar="SETTING",
        help="the compression setting's name in artifact paths, e.g. int8_linear_symmetric_per_channel or"
        " palettize4_per_grouped_channel16 (compress/settings.py's SLUG_GRAMMAR; a wrong one is answered with it)",
    )  # fmt: skip
    step.add_argument(
        "--threads", type=int, default=1, help="threads computing palettes per tensor (the job's threads)"
    )
    step.add_argument("--recipe", type=Path, help="with --compression recipe-<id>: the recipe file of that content")
    step.add_argument(
        "--activation-ranges", type=Path, help="with a setting ending in _a8: the activation-ranges record of this package"
    )
    step.set_defaults(func=compress_package)
