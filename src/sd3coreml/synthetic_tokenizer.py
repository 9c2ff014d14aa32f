"""A synthetic CLIP BPE tokenizer with the real vocabulary layout, for synthetic checkpoints.

Real CLIP's vocabulary has 49408 entries: the 256 byte-level characters (in GPT-2's
`bytes_to_unicode` order), the same 256 with the end-of-word suffix `</w>`, 48894 merge
results, then `<|startoftext|>` (49406) and `<|endoftext|>` (49407). This tokenizer keeps
that layout, so token ids reach 49407 exactly as in a real build, but its merges are
generated (base character + base character, with or without `</w>`) rather than learned.
Nothing here is random: the files depend on nothing but this module.
"""

import json
from pathlib import Path

VOCAB_SIZE = 49408
MERGE_COUNT = 48894
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
END_OF_WORD = "</w>"
MODEL_MAX_LENGTH = 77


def bytes_to_unicode() -> list[str]:
    """The 256 printable characters that stand for bytes 0..255, in GPT-2's order."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values = list(printable)
    code_points = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            byte_values.append(byte)
            code_points.append(256 + extra)
            extra += 1
    return [chr(code_point) for code_point in code_points]


def clip_merges() -> list[tuple[str, str]]:
    """48894 merges, each joining a base character to a base character or a word ending.

    Ordered by the first character's byte-level rank, so the printable ASCII pairs that
    prompts use come first and get the lowest (highest-priority) ranks.
    """
    characters = bytes_to_unicode()
    seconds = characters + [character + END_OF_WORD for character in characters]
    # Apple's Swift BPETokenizer skips every merges.txt line that starts with "#", not just
    # the version line, so a merge starting with "#" would rank differently there.
    firsts = [character for character in characters if character != "#"]
    merges = [(first, second) for first in firsts for second in seconds]
    return merges[:MERGE_COUNT]


def clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token to id, laid out as real CLIP's vocabulary."""
    characters = bytes_to_unicode()
    tokens = characters + [character + END_OF_WORD for character in characters]
    tokens += [first + second for first, second in merges]
    tokens += [START_OF_TEXT, END_OF_TEXT]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise AssertionError(f"synthetic CLIP vocabulary has {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return vocab


def _special_token(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def tokenizer_config(vocab: dict[str, int]) -> dict:
    """`tokenizer_config.json` as in SD3 Medium's `tokenizer/` folder."""
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
        "pad_token": END_OF_TEXT,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": END_OF_TEXT,
    }


def special_tokens_map() -> dict:
    return {
        "bos_token": _special_token(START_OF_TEXT),
        "eos_token": _special_token(END_OF_TEXT),
        "pad_token": END_OF_TEXT,
        "unk_token": _special_token(END_OF_TEXT),
    }


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")


def write_clip_tokenizer(tokenizer_dir) -> None:
    """Write `vocab.json`, `merges.txt`, `tokenizer_config.json`, `special_tokens_map.json`."""
    tokenizer_dir = Path(tokenizer_dir)
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    merges = clip_merges()
    vocab = clip_vocab(merges)
    # CLIP's vocab.json is one line in id order; the app's Swift tokenizer only needs valid JSON.
    (tokenizer_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merge_lines = ["#version: 0.2"] + [f"{first} {second}" for first, second in merges]
    (tokenizer_dir / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    _write_json(tokenizer_dir / "tokenizer_config.json", tokenizer_config(vocab))
    _write_json(tokenizer_dir / "special_tokens_map.json", special_tokens_map())
