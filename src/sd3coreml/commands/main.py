"""Command line: `python -m sd3coreml <step> ...`, one subcommand per pipeline step.

Every step the Snakemake rules run is here, so each can run by hand. Each command group's
module (`commands/<group>.py`) registers its steps and imports the library only inside a
step's function; the library never sees argparse. A run imports only its own step's group,
and `--help` all of them.
"""

import argparse
import importlib
import sys

from sd3coreml.errors import PipelineError
from sd3coreml.pipeline.disk import MIL_WRITER_FAILED, OUT_OF_ROOM, out_of_room_message, temporary_weights_message

GROUPS = {
    "sd3coreml.commands.synthetic": ("synthetic-transformer", "synthetic-components"),
    "sd3coreml.commands.inputs": ("download-file", "download-snapshot", "normalize-transformer", "copy-tokenizer"),
    "sd3coreml.commands.convert": (
        "convert-conditioning", "convert-input-stage", "convert-block-range", "convert-text-encoder",
        "convert-vae-decoder", "compress-package",
    ),
    "sd3coreml.commands.verify": ("verify-package", "fidelity-report", "end-to-end", "verify-attention"),
    "sd3coreml.commands.release": (
        "assemble-folder", "verify-folder", "compile-package", "compile-folder", "release-check", "mac-selfcheck",
        "cleanup",
    ),
    "sd3coreml.commands.sweep": (
        "sweep-summary", "sweep-fp16-chain", "sweep-end-to-end", "profile-on-device", "bench-report",
    ),
    "sd3coreml.commands.sensitivity": (
        "capture-calibration", "analyse-weights", "capture-text-calibration", "analyse-text-encoder",
        "recipe-from-budget", "activation-ranges",
    ),
}  # fmt: skip
# Step -> the command group module that registers it (code_closure.py reads this table).
STEP_MODULES = {step: module for module, steps in GROUPS.items() for step in steps}


def build_parser(step: str | None = None) -> argparse.ArgumentParser:
    """The parser for `step` (its group's steps only), or for every step when it is none of them."""
    parser = argparse.ArgumentParser(prog="python -m sd3coreml", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="step", required=True, metavar="STEP")
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
