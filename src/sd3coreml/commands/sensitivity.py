"""`capture-calibration`, `analyse-weights`, `recipe-from-budget` and their text encoders' twins:
compression chosen by measurement."""

from pathlib import Path

from sd3coreml.errors import PipelineError
from sd3coreml.frameworks import skip_unused_frameworks


def fix_threads(threads: int) -> None:
    """The job's own thread count, whatever OMP_NUM_THREADS says: float sums repeat only at one count."""
    import torch

    torch.set_num_threads(threads)


def capture_calibration(args) -> None:
    skip_unused_frameworks("sklearn")
    from sd3coreml.sensitivity.calibration import ChainSettings, capture_calibration

    fix_threads(args.threads)
    chain = ChainSettings(tuple(args.prompt), args.steps, args.shift, args.seed, tuple(args.latent))
    capture_calibration(args.weights, args.config, args.components, chain, args.out)


def capture_text_calibration(args) -> None:
    skip_unused_frameworks("sklearn")
    from sd3coreml.sensitivity.calibration import capture_text_calibration

    fix_threads(args.threads)
    capture_text_calibration(args.components, tuple(args.prompt), args.out)


def analyse_text_encoder(args) -> None:
    skip_unused_frameworks("sklearn")
    from sd3coreml.atomic import write_json
    from sd3coreml.sensitivity.text_encoders import analyse_text_encoder

    fix_threads(args.threads)
    record = analyse_text_encoder(args.components, args.calibration, args.encoder, args.widths, args.min_values,
                                  args.probe_widths, args.probe_samples, args.threads)  # fmt: skip
    write_json(args.out, record)


def activation_ranges(args) -> None:
    skip_unused_frameworks("torch", "sklearn", "transformers")
    from sd3coreml.atomic import write_json
    from sd3coreml.sensitivity.activation_ranges import activation_ranges

    write_json(args.out, activation_ranges(args.package, args.calibration, args.piece, args.probe_samples,
                                           args.min_snr_db))  # fmt: skip


def analyse_weights(args) -> None:
    skip_unused_frameworks("sklearn", "transformers")
    from sd3coreml.atomic import write_json
    from sd3coreml.sensitivity.analysis import analyse_piece

    fix_threads(args.threads)
    record = analyse_piece(args.weights, args.config, args.calibration, args.piece, args.widths, args.min_values,
                           args.probe_widths, args.probe_samples, args.threads)  # fmt: skip
    write_json(args.out, record)


def recipe_from_budget(args) -> None:
    skip_unused_frameworks("torch", "sklearn", "transformers")
    from sd3coreml.atomic import write_json
    from sd3coreml.compress.recipes import Recipe, write_recipe
    from sd3coreml.sensitivity.budget import recipe_from_budget

    recipes, report = recipe_from_budget(args.analyses, args.budget, args.rule)
    outputs = {"": args.out} if args.out else dict(args.recipe_of or ())
    if sorted(recipes) != sorted(outputs):
        given = ", ".join(sorted(outputs)) or "the transformer (--out)"
        raise PipelineError(f"the analyses hold weights of {', '.join(sorted(recipes)) or 'the transformer'}; "
                            f"the command was given recipes for {given}: give --out for the transformer's pieces, "
                            "--recipe-of ENTRY FILE for each text encoder")  # fmt: skip
    recipe_files = {piece: Recipe.from_json(recipe, outputs[piece]) for piece, recipe in recipes.items()}
    if args.report:
        write_json(args.report, report)
    for piece, recipe in recipe_files.items():
        write_recipe(recipe, outputs[piece])


def add_analysis_flags(step) -> None:
    """What every weight analysis (an MMDiT piece's, a text encoder's) takes besides its inputs."""
    step.add_argument("--widths", type=int, nargs="+", default=[1, 2, 4, 6, 8])
    step.add_argument("--min-values", type=int, default=10_000, help="analyse weights of more values than this")
    step.add_argument("--probe-widths", type=int, nargs="+", default=[4, 2])
    step.add_argument("--probe-samples", type=int, default=2)
    step.add_argument("--threads", type=int, default=1)
    step.add_argument("--out", type=Path, required=True, help="the sensitivity JSON to write")


def register_cli(subparsers) -> None:
    step = subparsers.add_parser("capture-calibration", help="what each MMDiT piece receives in the app's chain")
    step.add_argument("--weights", type=Path, required=True, help="transformer .safetensors (diffusers layout)")
    step.add_argument("--config", type=Path, required=True, help="transformer config JSON")
    step.add_argument("--components", type=Path, required=True, help="SD3 components folder (text encoders, tokenizer)")
    step.add_argument("--prompt", action="append", required=True, help="a calibration prompt (repeat for more)")
    step.add_argument("--steps", type=int, required=True)
    step.add_argument("--shift", type=float, required=True, help="the app's timestep shift")
    step.add_argument("--seed", type=int, default=0)
    step.add_argument("--latent", type=int, nargs=2, metavar=("H", "W"), required=True)
    step.add_argument("--threads", type=int, default=1)
    step.add_argument("--out", type=Path, required=True, help="the calibration folder to write")
    step.set_defaults(func=capture_calibration)

    step = subparsers.add_parser("analyse-weights", help="each weight of one MMDiT piece palettized alone")
    step.add_argument("--weights", type=Path, required=True)
    step.add_argument("--config", type=Path, required=True)
    step.add_argument("--calibration", type=Path, required=True, help="a capture-calibration folder")
    step.add_argument("--piece", required=True, help="conditioning, input or block<i>")
    add_analysis_flags(step)
    step.set_defaults(func=analyse_weights)

    step = subparsers.add_parser("capture-text-calibration", help="what each text encoder receives and returns")
    step.add_argument("--components", type=Path, required=True, help="SD3 components folder (text encoders, tokenizer)")
    step.add_argument("--prompt", action="append", required=True, help="a calibration prompt (repeat for more)")
    step.add_argument("--threads", type=int, default=1)
    step.add_argument("--out", type=Path, required=True, help="the calibration folder to write")
    step.set_defaults(func=capture_text_calibration)

    step = subparsers.add_parser("analyse-text-encoder", help="each weight of one text encoder palettized alone")
    step.add_argument("--components", type=Path, required=True)
    step.add_argument("--calibration", type=Path, required=True, help="a capture-text-calibration folder")
    step.add_argument("--encoder", required=True, help="the folder entry: TextEncoder or TextEncoder2")
    add_analysis_flags(step)
    step.set_defaults(func=analyse_text_encoder)

    step = subparsers.add_parser("activation-ranges", help="a package's activation ranges over its calibration inputs")
    step.add_argument("--package", type=Path, required=True, help="the fp16 .mlpackage (iOS17 or later)")
    step.add_argument("--calibration", type=Path, required=True, help="a capture-(text-)calibration folder")
    step.add_argument("--piece", required=True, help="the package's first piece: conditioning, input, block<i>, "
                      "TextEncoder or TextEncoder2")  # fmt: skip
    step.add_argument("--probe-samples", type=int, default=1, help="calibration samples each op's effect is measured on")
    step.add_argument("--min-snr-db", type=float, default=30.0,
                      help="keep the most sensitive ops fp16 until the rest's predicted SNR reaches this")  # fmt: skip
    step.add_argument("--out", type=Path, required=True, help="the ranges JSON to write")
    step.set_defaults(func=activation_ranges)

    step = subparsers.add_parser("recipe-from-budget", help="a per-weight recipe from sensitivity records")
    step.add_argument("--analyses", type=Path, nargs="+", required=True)
    step.add_argument("--budget", required=True, help="bits_per_weight=X, bytes=N or min_snr_db=D")
    recipes = step.add_mutually_exclusive_group(required=True)
    recipes.add_argument("--out", type=Path, help="the recipe JSON to write (the transformer's pieces)")
    recipes.add_argument("--recipe-of", nargs=2, action="append", metavar=("ENTRY", "FILE"),
                         help="the recipe JSON of text encoder ENTRY to write (repeat for each)")  # fmt: skip
    step.add_argument("--report", type=Path, help="the report JSON to write")
    step.add_argument("--rule", choices=("allocation", "per_layer_threshold"), default="allocation",
                      help="whose widths: the allocation's, or ml-stable-diffusion's per-layer threshold rule at "
                      "the allocation's bytes (to measure the allocation against)")  # fmt: skip
    step.set_defaults(func=recipe_from_budget)
