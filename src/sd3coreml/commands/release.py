"""`assemble-folder`, `verify-folder`, `compile-package`, `compile-folder`, `release-check`,
`mac-selfcheck`, `cleanup`: the folders users get, checked, compiled, published and tidied."""

import json
import logging
import sys
from pathlib import Path

from sd3coreml.errors import PipelineError
from sd3coreml.frameworks import skip_unused_frameworks
from sd3coreml.release.compile import DEFAULT_COMPILER, DEFAULT_DEPLOYMENT_TARGET, TEMPLATE_FIELDS


def assemble_folder(args) -> None:
    skip_unused_frameworks("torch", "sklearn", "transformers")  # only coremltools' protobuf classes are read
    from sd3coreml.release.folder import assemble_from_spec

    manifest = assemble_from_spec(args.spec, args.out, args.build_record)
    if not manifest["app_loadable"]:
        print(f"{args.out}: built, but the app cannot load it: {'; '.join(manifest['app_problems'])}")


def verify_folder(args) -> None:
    # Only coremltools' protobuf classes are needed: keep its framework probing, and its
    # warnings about them, out of a report that users read line by line.
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    skip_unused_frameworks("torch", "sklearn", "transformers")
    from sd3coreml.release.folder_check import app_note, folder_problems

    failing = []
    for folder_path in args.folders:
        problems = folder_problems(folder_path)
        for problem in problems:
            print(f"{folder_path}: {problem}")
        if problems:
            failing.append(f"{folder_path} ({len(problems)})")
        else:
            print(f"{folder_path}: OK, matches its SHA256SUMS and manifest.json")
        if note := app_note(folder_path):
            print(f"{folder_path}: {note}")
    sys.stdout.flush()
    if failing:
        raise PipelineError(
            f"{', '.join(failing)}: problem(s) against SHA256SUMS and manifest.json; "
            "rebuild the folder with its snakemake target"
        )


def compile_package(args) -> None:
    from sd3coreml.release.compile import compile_package

    compile_package(args.package, args.out, args.compiler, args.deployment_target)


def compile_folder(args) -> None:
    skip_unused_frameworks("torch", "sklearn", "transformers")
    from sd3coreml.release.compile import compile_folder

    compile_folder(args.packages_dir, args.app_dir, args.compiler, args.deployment_target)


def release_check(args) -> None:
    from sd3coreml.release.downloader import ADVICE, folder_files, listed_files, release_hazards

    new_folder = Path(args.new)
    if not new_folder.is_dir():
        raise PipelineError(f"{new_folder}: no such folder; NEW is a built packages or app folder")
    hazards = release_hazards(listed_files(args.old), folder_files(new_folder))
    for hazard in hazards:
        print(f"{new_folder}: {hazard}")
    sys.stdout.flush()
    if hazards:
        raise PipelineError(
            f"{new_folder} over {args.old}: {len(hazards)} file(s) the app's downloader gets wrong; {ADVICE}"
        )
    print(f"{new_folder}: every file reaches phones that hold {args.old}")


def mac_selfcheck(args) -> None:
    from sd3coreml.atomic import written_atomically
    from sd3coreml.sweep.mac_selfcheck import gather, summary

    if sys.platform != "darwin":
        raise PipelineError("mac-selfcheck looks at a Mac's Xcode and Core ML; run it on a Mac")
    record = gather(args.package, args.compiler)
    with written_atomically(args.out_json) as temporary:
        temporary.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    with written_atomically(args.out_summary) as temporary:
        temporary.write_text(summary(record))
    print(summary(record))


def cleanup(args) -> None:
    from sd3coreml.pipeline.cleanup import clean, referenced_outputs

    keep = referenced_outputs(args.snakefile, args.config_json, args.targets)
    print(clean(args.root, keep, args.dry_run))


def add_compiler_options(parser) -> None:
    parser.add_argument(
        "--compiler",
        default=DEFAULT_COMPILER,
        help=f"command template with the fields {TEMPLATE_FIELDS} (default: %(default)s)",
    )
    parser.add_argument(
        "--deployment-target",
        default=DEFAULT_DEPLOYMENT_TARGET,
        help="the compiler's --deployment-target, not the conversion target (default: %(default)s)",
    )


def register_cli(subparsers) -> None:
    step = subparsers.add_parser(
        "assemble-folder", help="build a resource folder from a JSON spec, replacing the old one whole"
    )
    step.add_argument(
        "--spec",
        type=Path,
        required=True,
        help='JSON file or - for stdin: {"entries": {name: path}, "manifest": {..., "input_files": {label: path}}}',
    )
    step.add_argument("--out", type=Path, required=True, help="the folder to (re)build")
    step.add_argument("--build-record", type=Path, help="JSON of host and time facts, written outside the folder")
    step.set_defaults(func=assemble_folder)

    step = subparsers.add_parser(
        "verify-folder", help="check folders against their SHA256SUMS and manifest.json; exit 1 listing each problem"
    )
    step.add_argument("folders", type=Path, nargs="+", metavar="FOLDER")
    step.set_defaults(func=verify_folder)

    step = subparsers.add_parser("compile-package", help="compile one .mlpackage to a .mlmodelc (macOS)")
    step.add_argument("--package", type=Path, required=True)
    step.add_argument("--out", type=Path, required=True, help="the .mlmodelc to write, e.g. TextEncoder.mlmodelc")
    add_compiler_options(step)
    step.set_defaults(func=compile_package)

    step = subparsers.add_parser(
        "compile-folder", help="compile a packages folder into the app folder (the Mac hand-off)"
    )
    step.add_argument("packages_dir", type=Path)
    step.add_argument("app_dir", type=Path)
    add_compiler_options(step)
    step.set_defaults(func=compile_folder)

    step = subparsers.add_parser(
        "release-check", help="what the app's downloader would get wrong publishing NEW over OLD; exit 1 if anything"
    )
    step.add_argument(
        "old", type=Path, help="what phones hold: a folder, its manifest.json, or a saved Hub tree listing"
    )
    step.add_argument("new", type=Path, help="the built folder to publish")
    step.set_defaults(func=release_check)

    step = subparsers.add_parser("mac-selfcheck", help="what this Mac's Xcode and Core ML do with a package (macOS)")
    step.add_argument("--package", type=Path, required=True, help="a package to compile and run, e.g. a demo stage")
    step.add_argument("--compiler", default=DEFAULT_COMPILER, help="compiler template (its --platform is probed)")
    step.add_argument("--out-json", type=Path, required=True)
    step.add_argument("--out-summary", type=Path, required=True)
    step.set_defaults(func=mac_selfcheck)

    step = subparsers.add_parser("cleanup", help="remove artifacts no configured target references")
    step.add_argument("--root", type=Path, required=True, help="the config's output_root")
    step.add_argument("--snakefile", required=True)
    step.add_argument("--config-json", required=True, help="the run's config, as JSON")
    step.add_argument("--targets", nargs="+", required=True, help="the targets whose artifacts stay")
    step.add_argument("--dry-run", action="store_true", help="list what would go; remove nothing")
    step.set_defaults(func=cleanup)
