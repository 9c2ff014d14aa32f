"""CLIP BPE tokenizer files for the app: checked, then copied byte for byte."""

import json
import shutil
from pathlib import Path

from sd3coreml.atomic import written_atomically
from sd3coreml.errors import PipelineError

CLIP_VOCAB_SIZE = 49408
BOS, EOS = 49406, 49407
SPECIAL_TOKENS = {"<|startoftext|>": BOS, "<|endoftext|>": EOS}
MAX_TOKENS = 77  # CLIP's context; SD3 pads every prompt to it


def check_vocab(path: Path) -> None:
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; the components folder needs tokenizer/vocab.json") from None
    except OSError as error:
        raise PipelineError(f"{path}: unreadable ({error.strerror}); restore CLIP's tokenizer/vocab.json") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PipelineError(f"{path}: not valid JSON; restore CLIP's tokenizer/vocab.json") from None
    if not isinstance(vocab, dict) or not all(type(index) is int for index in vocab.values()):
        raise PipelineError(f"{path}: not a JSON object of token -> id; restore CLIP's tokenizer/vocab.json")
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise PipelineError(f"{path}: expected CLIP's {CLIP_VOCAB_SIZE} tokens; restore CLIP's tokenizer/vocab.json")
    for token, index in SPECIAL_TOKENS.items():
        if vocab.get(token) != index:
            raise PipelineError(f"{path}: {token} must have id {index}; restore CLIP's tokenizer/vocab.json")


def check_merges(path: Path) -> None:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; the components folder needs tokenizer/merges.txt") from None
    except OSError as error:
        raise PipelineError(f"{path}: unreadable ({error.strerror}); restore CLIP's tokenizer/merges.txt") from None
    except UnicodeDecodeError:
        raise PipelineError(f"{path}: not UTF-8 text; restore CLIP's tokenizer/merges.txt") from None
    body = lines[1:] if lines and lines[0].startswith("#version") else lines
    if not body or any(len(line.split(" ")) != 2 for line in body if line):
        raise PipelineError(f"{path}: not a BPE merges file (two tokens a line); restore CLIP's tokenizer/merges.txt")


def copy_tokenizer_files(tokenizer_dir: Path, out_dir: Path) -> None:
    tokenizer_dir, out_dir = Path(tokenizer_dir), Path(out_dir)
    check_vocab(tokenizer_dir / "vocab.json")
    check_merges(tokenizer_dir / "merges.txt")
    for name in ("vocab.json", "merges.txt"):
        # A copy that fails (a full disk) leaves neither a partial file nor its temporary.
        with written_atomically(out_dir / name) as temporary:
            shutil.copyfile(tokenizer_dir / name, temporary)


def register_cli(subparsers) -> None:
    step = subparsers.add_parser("copy-tokenizer", help="check and copy vocab.json and merges.txt")
    step.add_argument("--tokenizer", type=Path, required=True, help="e.g. COMPONENTS/tokenizer")
    step.add_argument("--out-dir", type=Path, required=True)
    step.set_defaults(func=lambda args: copy_tokenizer_files(args.tokenizer, args.out_dir))


def load_clip_tokenizer(directory: Path, max_length: int = MAX_TOKENS):
    """transformers' CLIPTokenizer over a folder's vocab.json and merges.txt, padding to 77 like SD3."""
    from transformers import CLIPTokenizer

    files = [str(Path(directory) / name) for name in ("vocab.json", "merges.txt")]
    return CLIPTokenizer(*files, model_max_length=max_length)
