"""CLIP's real BPE vocabulary, written as SD3's `tokenizer/` and `tokenizer_2/` folders.

The `open_clip_torch` wheel ships OpenAI's CLIP BPE file (`open_clip/bpe_simple_vocab_16e6.txt.gz`,
MIT licensed): a header line, then merges; CLIP uses the first 48,894. Its vocabulary is the 256
byte-level characters (in GPT-2's `bytes_to_unicode` order), the same 256 with the end-of-word
suffix `</w>`, one token per merge, then `<|startoftext|>` (49406) and `<|endoftext|>` (49407):
49,408 ids, exactly Hugging Face's `vocab.json` for `openai/clip-vit-large-patch14`. The file is
read where pip put it, without importing open_clip (which imports torch and more).
"""

import gzip
import importlib.metadata
import json
from pathlib import Path

from sd3coreml.errors import PipelineError

VOCAB_SIZE = 49408
MERGE_COUNT = 48894
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
END_OF_WORD = "</w>"
MODEL_MAX_LENGTH = 77
BPE_DISTRIBUTION, BPE_FILE = "open_clip_torch", "bpe_simple_vocab_16e6.txt.gz"
# What each of SD3's tokenizer folders pads with: CLIP-L with EOS, CLIP-G with "!" (id 0), as
# SDXL's `tokenizer_2` and the app's second BPETokenizer (`padToken: "!"`) do.
PAD_TOKENS = {"tokenizer": END_OF_TEXT, "tokenizer_2": "!"}


def bpe_file() -> Path:
    """Where the open_clip_torch wheel put CLIP's BPE file."""
    try:
        distribution = importlib.metadata.distribution(BPE_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise PipelineError(
            f"CLIP's BPE vocabulary comes from the {BPE_DISTRIBUTION} wheel, which is not installed; "
            f"run make .venv/.installed (pip install --no-deps {BPE_DISTRIBUTION})"
        ) from None
    for path in distribution.files or ():
        if path.name == BPE_FILE:
            return Path(distribution.locate_file(path))
    raise PipelineError(f"{BPE_DISTRIBUTION} holds no {BPE_FILE}; reinstall it with make .venv/.installed")


def bytes_to_unicode() -> list[str]:
    """The 256 printable characters that stand for bytes 0..255, in GPT-2's order."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    code_points = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            code_points.append(256 + extra)
            extra += 1
    return [chr(code_point) for code_point in code_points]


def clip_merges() -> list[tuple[str, str]]:
    """CLIP's 48,894 merges, in rank order."""
    lines = gzip.decompress(bpe_file().read_bytes()).decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1 : MERGE_COUNT + 1]]


def clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token to id, as CLIP builds its vocabulary."""
    characters = bytes_to_unicode()
    tokens = characters + [character + END_OF_WORD for character in characters]
    tokens += [first + second for first, second in merges]
    tokens += [START_OF_TEXT, END_OF_TEXT]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise AssertionError(f"CLIP vocabulary has {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return vocab


def _special_token(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def tokenizer_config(vocab: dict[str, int], pad_token: str) -> dict:
    """`tokenizer_config.json` as in SD3 Medium's tokenizer folders."""
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(vocab[token]): {**_special_token(token), "special": True} for token in (START_OF_TEXT, END_OF_TEXT)
        },
        "bos_token": START_OF_TEXT,
        # SD3's file says True; transformers 5 ignores that for BPE and warns on every load.
        "clean_up_tokenization_spaces": False,
        "do_lower_case": True,
        "eos_token": END_OF_TEXT,
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": pad_token,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": END_OF_TEXT,
    }


def special_tokens_map(pad_token: str) -> dict:
    return {
        "bos_token": _special_token(START_OF_TEXT),
        "eos_token": _special_token(END_OF_TEXT),
        "pad_token": pad_token,
        "unk_token": _special_token(END_OF_TEXT),
    }


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")


def write_clip_tokenizer(tokenizer_dir, pad_token: str = END_OF_TEXT) -> None:
    """Write `vocab.json`, `merges.txt`, `tokenizer_config.json`, `special_tokens_map.json`."""
    tokenizer_dir = Path(tokenizer_dir)
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    merges = clip_merges()
    vocab = clip_vocab(merges)
    # Hugging Face's files: vocab.json one line in id order, merges.txt after its version line.
    (tokenizer_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merge_lines = ["#version: 0.2"] + [f"{first} {second}" for first, second in merges]
    # The last line ends with a newline: the app's merges reader drops a line without one.
    (tokenizer_dir / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    _write_json(tokenizer_dir / "tokenizer_config.json", tokenizer_config(vocab, pad_token))
    _write_json(tokenizer_dir / "special_tokens_map.json", special_tokens_map(pad_token))


def write_sd3_tokenizers(components_dir) -> None:
    """`tokenizer/` and `tokenizer_2/` of SD3's diffusers layout: one vocabulary, two pad tokens."""
    for folder, pad_token in PAD_TOKENS.items():
        write_clip_tokenizer(Path(components_dir) / folder, pad_token)
