"""CLIP BPE tokenizer files for the app: checked, then copied byte for byte."""

import json
import shutil
from pathlib import Path

from sd3coreml.atomic import written_atomically
from sd3coreml.contract import BOS, CLIP_VOCAB_SIZE, EOS
from sd3coreml.errors import PipelineError

SPECIAL_TOKENS = {"<|startoftext|>": BOS, "<|endoftext|>": EOS}


def check_vocab(path: Path, fix: str | None = None) -> None:
    """CLIP's vocabulary, its special ids in place. `fix` replaces the advice to restore the file
    (a generated folder is remade, not mended)."""
    restore = fix or "restore CLIP's tokenizer/vocab.json"
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; {fix or 'the components folder needs tokenizer/vocab.json'}") from None
    except IsADirectoryError:
        raise PipelineError(f"{path}: a folder, not a file; {restore}") from None
    except OSError as error:
        raise PipelineError(f"{path}: unreadable ({error.strerror}); {restore}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PipelineError(f"{path}: not valid JSON; {restore}") from None
    if not isinstance(vocab, dict) or not all(type(index) is int for index in vocab.values()):
        raise PipelineError(f"{path}: not a JSON object of token -> id; {restore}")
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise PipelineError(f"{path}: expected CLIP's {CLIP_VOCAB_SIZE} tokens; {restore}")
    for token, index in SPECIAL_TOKENS.items():
        if vocab.get(token) != index:
            raise PipelineError(f"{path}: {token} must have id {index}; {restore}")


def check_merges(path: Path, fix: str | None = None) -> None:
    """BPE merges: two tokens a line, after an optional `#version` line. `fix` as in check_vocab."""
    restore = fix or "restore CLIP's tokenizer/merges.txt"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; {fix or 'the components folder needs tokenizer/merges.txt'}") from None
    except IsADirectoryError:
        raise PipelineError(f"{path}: a folder, not a file; {restore}") from None
    except OSError as error:
        raise PipelineError(f"{path}: unreadable ({error.strerror}); {restore}") from None
    except UnicodeDecodeError:
        raise PipelineError(f"{path}: not UTF-8 text; {restore}") from None
    body = lines[1:] if lines and lines[0].startswith("#version") else lines
    if not body or any(len(line.split(" ")) != 2 for line in body if line):
        raise PipelineError(f"{path}: not a BPE merges file (two tokens a line); {restore}")


FILE_CHECKS = {"vocab.json": check_vocab, "merges.txt": check_merges}


def check_same_tokenizers(tokenizer_dir: Path, tokenizer_2_dir: Path) -> None:
    """The app ships one vocab.json and merges.txt for both encoders: SD3's two folders must agree."""
    for name in ("vocab.json", "merges.txt"):
        first, second = Path(tokenizer_dir) / name, Path(tokenizer_2_dir) / name
        if not second.is_file():
            raise PipelineError(f"{second}: missing; the components folder needs tokenizer_2/{name}")
        if second.read_bytes() == first.read_bytes():
            continue  # the usual case, decided without parsing (this runs at every parse)
        # A file the comparison below cannot read is refused as itself, in one line.
        FILE_CHECKS[name](second, f"make it a copy of {first}")
        if tokenizer_content(first) != tokenizer_content(second):
            raise PipelineError(
                f"{second}: differs from {first}, but the app feeds both text encoders from one {name}; "
                "use components whose two CLIP tokenizers share their vocabulary and merges (SD3 Medium's do)"
            )


def tokenizer_content(path: Path):
    """What a tokenizer file says, whatever its formatting: the vocabulary, or the merge lines."""
    text = Path(path).read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else [line for line in text.splitlines() if line]


def copy_tokenizer_files(tokenizer_dir: Path, out_dir: Path) -> None:
    tokenizer_dir, out_dir = Path(tokenizer_dir), Path(out_dir)
    check_vocab(tokenizer_dir / "vocab.json")
    check_merges(tokenizer_dir / "merges.txt")
    for name in ("vocab.json", "merges.txt"):
        # A copy that fails (a full disk) leaves neither a partial file nor its temporary.
        with written_atomically(out_dir / name) as temporary:
            shutil.copyfile(tokenizer_dir / name, temporary)


def load_clip_tokenizer(directory: Path):
    """transformers' CLIPTokenizer of one of SD3's tokenizer folders, its pad token included."""
    from transformers import CLIPTokenizer

    # from_pretrained reads the files; in transformers 5, vocab_file=/merges_file= keywords would
    # silently build a 3-token vocabulary.
    return CLIPTokenizer.from_pretrained(str(directory))
