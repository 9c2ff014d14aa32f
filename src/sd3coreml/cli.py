"""Command line: `python -m sd3coreml <step> ...`, one subcommand per pipeline step.

Each step module exposes `register_cli(subparsers)`, which adds its subcommands and sets
`func` on each to a callable taking the parsed namespace. Heavy libraries (torch,
coremltools) are imported inside the steps, so `--help` stays fast.
"""

import argparse
import importlib
import sys

from sd3coreml.errors import PipelineError

STEP_MODULES = [
    "sd3coreml.synthetic",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sd3coreml", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    for name in STEP_MODULES:
        importlib.import_module(name).register_cli(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
