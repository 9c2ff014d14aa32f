"""`synthetic-transformer`, `synthetic-components`: the demo's inputs, made from a seed."""

from pathlib import Path

from sd3coreml.synthetic.checkpoints import DISTRIBUTIONS
from sd3coreml.synthetic.presets import PRESETS


def synthetic_transformer(args) -> None:
    from sd3coreml.synthetic.checkpoints import write_synthetic_transformer

    write_synthetic_transformer(args.preset, args.seed, args.weights, args.config, args.distribution)


def synthetic_components(args) -> None:
    from sd3coreml.synthetic.checkpoints import write_synthetic_components

    write_synthetic_components(args.preset, args.seed, args.out)


def add_preset_and_seed(parser) -> None:
    parser.add_argument("--preset", required=True, help=f"model size: {', '.join(PRESETS)}")
    parser.add_argument("--seed", type=int, required=True, help="the same preset and seed give identical files")


def register_cli(subparsers) -> None:
    step = subparsers.add_parser(
        "synthetic-transformer", help="write a synthetic distilled SD3 transformer checkpoint and its config"
    )
    add_preset_and_seed(step)
    step.add_argument("--weights", type=Path, required=True, help="output .safetensors (bare, diffusers names)")
    step.add_argument("--config", type=Path, required=True, help="output transformer config .json")
    step.add_argument("--distribution", choices=DISTRIBUTIONS, default="normal", help="of the matrices")
    step.set_defaults(func=synthetic_transformer)

    step = subparsers.add_parser(
        "synthetic-components", help="write synthetic text encoders, VAE and tokenizers in SD3's diffusers layout"
    )
    add_preset_and_seed(step)
    step.add_argument("--out", type=Path, required=True, help="output folder")
    step.set_defaults(func=synthetic_components)
