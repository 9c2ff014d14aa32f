"""`download-file`, `download-snapshot`, `normalize-transformer`, `copy-tokenizer`: a build's inputs."""

import json
from pathlib import Path

from sd3coreml.errors import PipelineError


def read_pins(args) -> dict[str, str]:
    text = args.pins.read_text(encoding="utf-8") if args.pins else args.pins_json
    try:
        pins = json.loads(text)
    except json.JSONDecodeError as error:
        raise PipelineError(f'{args.pins or "--pins-json"}: not JSON ({error.msg}); write {{"path": "sha256"}}')
    if not isinstance(pins, dict) or not all(isinstance(v, str) for v in pins.values()):
        raise PipelineError(f'{args.pins or "--pins-json"}: write a JSON object {{"path in repo": "sha256"}}')
    return pins


def download_file(args) -> None:
    from sd3coreml.inputs.download import download_file

    out = download_file(args.repo, args.filename, args.revision, args.sha256, args.out)
    print(f"placed {out} (sha256 {args.sha256.lower()}, {args.repo}@{args.revision})")


def download_snapshot(args) -> None:
    from sd3coreml.inputs.download import download_snapshot

    pins = read_pins(args)
    out_dir = download_snapshot(args.repo, args.revision, pins, args.out)
    print(f"placed {len(pins)} files in {out_dir} (sha256 checked, {args.repo}@{args.revision})")


def normalize_transformer(args) -> None:
    from sd3coreml.inputs.normalize import normalize_transformer

    normalize_transformer(args.weights, args.config, args.out)


def copy_tokenizer(args) -> None:
    from sd3coreml.inputs.tokenizer import copy_tokenizer_files

    copy_tokenizer_files(args.tokenizer, args.out_dir)


def register_cli(subparsers) -> None:
    step = subparsers.add_parser("download-file", help="one pinned file from the Hugging Face Hub, sha256-checked")
    step.add_argument("--repo", required=True, help="OWNER/NAME")
    step.add_argument("--filename", required=True, help="path inside the repo")
    step.add_argument("--revision", required=True, help="full 40-hex commit hash")
    step.add_argument("--sha256", required=True, help="expected sha256 of the file")
    step.add_argument("--out", type=Path, required=True, help="where to place the file")
    step.set_defaults(func=download_file)

    step = subparsers.add_parser("download-snapshot", help="pinned files of a Hub repo into a folder, sha256-checked")
    step.add_argument("--repo", required=True, help="OWNER/NAME")
    step.add_argument("--revision", required=True, help="full 40-hex commit hash")
    pins = step.add_mutually_exclusive_group(required=True)
    pins.add_argument("--pins", type=Path, help="JSON file {path in repo: sha256}")
    pins.add_argument("--pins-json", help="the same JSON object as a string")
    step.add_argument("--out", type=Path, required=True, help="the folder to write")
    step.set_defaults(func=download_snapshot)

    step = subparsers.add_parser(
        "normalize-transformer",
        help="convert an SD3 transformer in the original layout (joint_blocks.*) to a bare diffusers-format file",
    )
    step.add_argument("--weights", type=Path, required=True, help="original-layout .safetensors (single file or bare)")
    step.add_argument("--config", type=Path, required=True, help="the pinned transformer config JSON")
    step.add_argument("--out", type=Path, required=True, help="the diffusers-format .safetensors to write")
    step.set_defaults(func=normalize_transformer)

    step = subparsers.add_parser("copy-tokenizer", help="check and copy vocab.json and merges.txt")
    step.add_argument("--tokenizer", type=Path, required=True, help="e.g. COMPONENTS/tokenizer")
    step.add_argument("--out-dir", type=Path, required=True)
    step.set_defaults(func=copy_tokenizer)
