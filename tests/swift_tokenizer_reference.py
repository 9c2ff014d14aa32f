"""A second model of the app's tokenizer, for tests only, written from the Swift source alone.

MobileDiffuser `bfe2f28`, `ml-stable-diffusion/swift/StableDiffusion/tokenizer/BPETokenizer.swift`
and `BPETokenizer+Reading.swift`, and `pipeline/TextEncoderXL.swift` (`encode(_:)`), carried over
function by function, with what Swift's own types do spelled out as small Python types:

- `SwiftString`: `==` and hashing by canonical equivalence (compared here by NFD, where the
  module under test uses NFC), so a `dict`/`set` keyed by it behaves as a Swift `Dictionary`/`Set`
  (an equal key keeps its first spelling; assignment replaces only the value);
- `characters`: a `String`'s `Character`s, extended grapheme clusters by the `regex` module's
  `\\X` (the one piece this file shares with the module under test);
- `trimming_whitespaces_and_newlines`: Foundation's set as `CFUniChar.c` writes it
  (`isWhitespace` || `isNewline`), trimmed scalar by scalar as swift-foundation's
  `_trimmingCharacters(in:)` does;
- `lowercased`: the stdlib's `String.lowercased()`, each scalar's `lowercaseMapping`;
- `split`: `Collection.split(separator:)` with `omittingEmptySubsequences: true`, for bytes and
  for `Character`s alike;
- `JSONDecoder` into `[String: Int]`: the first of equal keys wins (`_setIfNil`);
- `String(bytes:)`: UTF-8 with ill-formed sequences repaired to U+FFFD.

It imports nothing from `sd3coreml`. A Swift array index past the end traps; here it raises
`IndexError` the same way.
"""

import json
import unicodedata
from pathlib import Path

import regex

_GRAPHEME = regex.compile(r"\X")


class SwiftString:
    """A Swift `String` value: its text, equal to another when canonically equivalent."""

    __slots__ = ("_canonical", "_hash", "text")

    def __init__(self, text: str):
        self.text = text
        self._canonical = unicodedata.normalize("NFD", text)
        self._hash = hash(self._canonical)

    def __eq__(self, other):
        return self._canonical == other._canonical

    def __hash__(self):
        return self._hash

    def __add__(self, other):
        return SwiftString(self.text + other.text)

    def __repr__(self):
        return f"SwiftString({self.text!r})"


def _foundation_is_whitespace(value: int) -> bool:
    return (
        value == 0x0020 or value == 0x0009 or value == 0x00A0 or value == 0x1680
        or 0x2000 <= value <= 0x200B or value == 0x202F or value == 0x205F or value == 0x3000
    )  # fmt: skip


def _foundation_is_newline(value: int) -> bool:
    return 0x000A <= value <= 0x000D or value == 0x0085 or value == 0x2028 or value == 0x2029


def foundation_whitespaces_and_newlines_contains(scalar: str) -> bool:
    value = ord(scalar)
    return _foundation_is_whitespace(value) or _foundation_is_newline(value)


def trimming_whitespaces_and_newlines(text: str) -> str:
    scalars = list(text)
    start = 0
    while start < len(scalars) and foundation_whitespaces_and_newlines_contains(scalars[start]):
        start += 1
    if start == len(scalars):
        return ""
    end = len(scalars) - 1
    while foundation_whitespaces_and_newlines_contains(scalars[end]):
        end -= 1
    return "".join(scalars[start : end + 1])


def lowercased(text: str) -> str:
    if text.isascii():
        return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)
    result = ""
    for scalar in text:
        result += scalar.lower()  # one scalar alone: its full mapping, no neighbours seen
    return result


def characters(text: str) -> list[SwiftString]:
    return [SwiftString(match.group()) for match in _GRAPHEME.finditer(text)]


def split(collection, separator) -> list:
    """`split(separator:)`, maxSplits unlimited, omittingEmptySubsequences true."""
    result, current = [], []
    for element in collection:
        if element == separator:
            if current:
                result.append(current)
            current = []
        else:
            current.append(element)
    if current:
        result.append(current)
    return result


def string_from_bytes(raw) -> SwiftString:
    return SwiftString(bytes(raw).decode("utf-8", errors="replace"))


class InvalidMergeFileLine(Exception):
    pass


class BPETokenizer:
    start_token = SwiftString("<|startoftext|>")
    end_token = SwiftString("<|endoftext|>")
    unknown_token = SwiftString("<|endoftext|>")

    def __init__(self, merges_url: Path, vocabulary_url: Path, pad_token: str = "<|endoftext|>"):
        self.merges = self.read_merges(merges_url)
        self.vocabulary = self.read_vocabulary(vocabulary_url)
        self.pad_token = SwiftString(pad_token)

    @property
    def unknown_token_id(self) -> int:
        return self.vocabulary.get(self.unknown_token, 0)

    @staticmethod
    def read_vocabulary(url: Path) -> dict:
        def decode_object(pairs):
            result = {}
            for key, value in pairs:
                key = SwiftString(key)
                if key not in result:
                    result[key] = value
            return result

        return json.loads(Path(url).read_bytes().decode("utf-8"), object_pairs_hook=decode_object)

    @staticmethod
    def read_merges(url: Path) -> dict:
        data = Path(url).read_bytes()
        merges = {}
        index = 0
        line = bytearray()
        for byte in data:
            if byte == ord("\n"):
                pair = BPETokenizer.parse_merges_line(line, index)
                if pair is not None:
                    merges[pair] = index
                line.clear()
                index += 1
            else:
                line.append(byte)
        return merges

    @staticmethod
    def parse_merges_line(line: bytearray, index: int):
        if not line or line[0] == ord("#"):
            return None
        pair = split(line, ord(" "))
        if len(pair) != 2:
            raise InvalidMergeFileLine(index + 1)
        return string_from_bytes(pair[0]), string_from_bytes(pair[1])

    def tokenize(self, input: str, min_count: int | None = None) -> tuple[list[str], list[int]]:
        tokens = [self.start_token, *self.encode(input), self.end_token]
        if min_count is not None and min_count > len(tokens):
            tokens += [self.pad_token] * (min_count - len(tokens))
        ids = [self.vocabulary.get(token, self.unknown_token_id) for token in tokens]
        return [token.text for token in tokens], ids

    def encode(self, input: str) -> list[SwiftString]:
        normalized = lowercased(trimming_whitespaces_and_newlines(input))
        words = split(characters(normalized), SwiftString(" "))
        return [token for word in words for token in self.encode_word(word)]

    def encode_word(self, word: list[SwiftString]) -> list[SwiftString]:
        tokens = list(word)
        if tokens:
            tokens[-1] = tokens[-1] + SwiftString("</w>")
        while True:
            can_merge = [pair for pair in self.pairs(tokens) if pair in self.merges]
            if not can_merge:
                break
            should_merge = min(can_merge, key=lambda pair: self.merges[pair])
            tokens = self.update(tokens, should_merge)
        return tokens

    @staticmethod
    def pairs(tokens: list[SwiftString]) -> set:
        if len(tokens) <= 1:
            return set()
        pairs = set()
        previous = tokens[0]
        for current in tokens[1:]:
            pairs.add((previous, current))
            previous = current
        return pairs

    @staticmethod
    def update(tokens: list[SwiftString], bigram) -> list[SwiftString]:
        if len(tokens) <= 1:
            return []
        first, second = bigram
        new_tokens = []
        index = 0
        while index < len(tokens):
            remaining = tokens[index:]
            if first in remaining:
                start_match_index = index + remaining.index(first)
                new_tokens += tokens[index:start_match_index]
                if index < len(tokens) - 1 and tokens[start_match_index + 1] == second:
                    new_tokens.append(first + second)
                    index = start_match_index + 2
                else:
                    new_tokens.append(first)
                    index = start_match_index + 1
            else:
                new_tokens += remaining
                break
        return new_tokens


def text_encoder_cut(tokens: list[str], ids: list[int], input_length: int = 77) -> tuple[list[str], list[int]]:
    """`TextEncoderXL.encode(_:)`'s truncation: drop the tail beyond the input length."""
    if len(ids) > input_length:
        tokens = tokens[: input_length - len(tokens)]
        ids = ids[: input_length - len(ids)]
    return tokens, ids


def text_encoder_ids(tokenizer: BPETokenizer, text: str, input_length: int = 77) -> tuple[list[str], list[int]]:
    """`TextEncoderXL.encode(_:)`: tokenize padding to the input length, then drop the tail."""
    tokens, ids = tokenizer.tokenize(text, min_count=input_length)
    return text_encoder_cut(tokens, ids, input_length)
