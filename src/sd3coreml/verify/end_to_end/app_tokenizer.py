"""The app's CLIP tokenizer, as MobileDiffuser (`bfe2f28`) runs it: Apple's Swift `BPETokenizer`.

It is not Hugging Face's `CLIPTokenizer`, and the ids differ where the two algorithms do
(`ml-stable-diffusion/swift/StableDiffusion/tokenizer/BPETokenizer.swift` and `+Reading.swift`):

- the prompt is trimmed and lowercased, then split on spaces only: no regex pre-split, so
  `robot,` is one word;
- a word is split into Swift characters (extended grapheme clusters), each looked up as a
  vocabulary symbol: a character outside CLIP's 256 byte symbols (CJK, emoji, `…`, a tab)
  becomes the unknown id 49407, while a Latin-1 letter such as `é` is its own byte symbol
  (Hugging Face encodes it as two UTF-8 byte symbols);
- merges.txt is read byte by byte: a line is a merge only once its newline is read (a last
  line without one is dropped), and empty lines and lines starting with `#` are skipped,
  which drops 6 of CLIP's real merges (`# #</w>`, `# :</w>`, ...); a merge's rank is its line
  number;
- `<|startoftext|>` and `<|endoftext|>` around the words, padding with the pad token to 77,
  then truncation by dropping the tail: a long prompt loses its EOS.

TextEncoder's tokenizer pads with `<|endoftext|>`, TextEncoder2's with `!` (SD3PipelineLoader.swift).

Every step above runs on Swift's `String`, `Character` and Foundation, not on Python's `str`,
and the ids follow their rules:

- Canonical equivalence. Swift compares and hashes `String`s by Unicode canonical equivalence,
  so `vocabulary[token, default: unknownTokenID]`, `merges[pair]` and the `==`/`firstIndex(of:)`
  of `update(_:merging:)` find an entry under any canonically equivalent spelling: `e` + U+0301
  finds `é</w>`, U+037E GREEK QUESTION MARK finds `;</w>`, U+1FEF finds `` `</w> ``. Here every
  lookup goes through the NFC form (`canonical`). The tokens keep Swift's spelling: of two
  equivalent pairs in a word the `Set<TokenPair>` keeps the first, and `update` writes every
  match in it.
- Trimming. `trimmingCharacters(in: .whitespacesAndNewlines)` drops, scalar by scalar, Foundation's
  set: U+0009-U+000D, U+0020, U+0085, U+00A0, U+1680, U+2000-U+200B, U+2028, U+2029, U+202F,
  U+205F, U+3000 (`FOUNDATION_WHITESPACES_AND_NEWLINES`). Python's `str.strip()` also drops
  U+001C-U+001F, which Foundation keeps (each then becomes an unknown id), and keeps U+200B, which
  Foundation drops. The set is read from Foundation's source (swift-corelibs-foundation's
  `CFUniChar.c` `isWhitespace`/`isNewline`, and swift-foundation's native copy in
  `BuiltInUnicodeScalarSet.swift`, which agree), not from a device run; Apple's documentation
  ("General Category Z*, U+000A ~ U+000D, and U+0085") leaves out U+0009 and U+200B, which the
  code holds.
- Lowercasing. `String.lowercased()` maps each scalar by its full lowercase mapping, with no
  context: a word-final `Σ` becomes `σ` (Python's `str.lower()` gives `ς`). No CLIP id depends on
  it (both are unknown), the tokens do.
- Splitting. `split(separator: " ")` compares whole `Character`s: a space that starts a cluster
  with what follows (a combining mark, U+200D, a variation selector, a skin-tone modifier, a
  spacing mark) or ends one after a prepended mark (U+0600) is no space, so the words on either
  side stay one word and the first gets no `</w>`. Empty words are omitted.
- Reading the files. `JSONDecoder` keeps the first of two canonically equivalent (or equal) keys
  in vocab.json (swift-foundation's `JSONDecoder.swift`, `_setIfNil`; Python's `json` keeps the
  last); of two equivalent merges lines the later rank wins (`merges[pair] = index`); a merges
  line with invalid UTF-8 is repaired with U+FFFD (`String(unsafeUninitializedCapacity:
  initializingUTF8With:)`), not refused.
- A crash. `update(_:merging:)` checks `index < tokens.count - 1` where it means the match's
  index: when the pair's first token is found only at the last position, Swift reads past the
  end and the app stops (`Index out of range`). CLIP's merges cannot get there (no merge's first
  part ends in `</w>`); with a merges.txt that can, `encode` raises `PipelineError`.

Unicode versions: canonical equivalence and case mappings are those of Python's `unicodedata`
(Unicode 14.0 under Python 3.11), extended grapheme clusters those of the `regex` module's `\\X`
(its installed release names the Unicode version it implements). A device runs its own Swift
standard library, whose Unicode tables move with the OS (Swift's repository has carried Unicode
14, 15, 16 and 17 data). Where a device's clusters differ from `\\X`'s (around characters newer
than its tables; Unicode 15.1's Indic conjunct rule on an older one), its ids differ too: one
unknown id or two, a split at a space or none. docs/TOKENIZER.md names the sources of each rule.
"""

import itertools
import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import regex

from sd3coreml.contract import APP_PADDING, MAX_TOKENS
from sd3coreml.errors import PipelineError

START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
UNKNOWN_TOKEN = END_TOKEN
END_OF_WORD = "</w>"
GRAPHEME = regex.compile(r"\X")
# CFUniChar.c: isWhitespace (U+0020, U+0009, U+00A0, U+1680, U+2000-U+200B, U+202F, U+205F,
# U+3000) or isNewline (U+000A-U+000D, U+0085, U+2028, U+2029).
FOUNDATION_WHITESPACES_AND_NEWLINES = "".join(
    map(chr, [0x20, 0x09, 0xA0, 0x1680, *range(0x2000, 0x200C), 0x202F, 0x205F, 0x3000,
              *range(0x0A, 0x0E), 0x85, 0x2028, 0x2029])
)  # fmt: skip
SPACE = " "


def canonical(text: str) -> str:
    """The spelling Swift's `String` equality and hashing stand for: its NFC form."""
    return unicodedata.normalize("NFC", text)


def trimmed(text: str) -> str:
    """`trimmingCharacters(in: .whitespacesAndNewlines)`: scalar by scalar, Foundation's set."""
    return text.strip(FOUNDATION_WHITESPACES_AND_NEWLINES)


def lowercased(text: str) -> str:
    """`String.lowercased()`: each scalar's full lowercase mapping, no final-sigma context."""
    if "\u03a3" not in text:
        return text.lower()  # str.lower() looks at a scalar's neighbours for Σ (U+03A3) alone
    return "".join(scalar.lower() for scalar in text)


def words(text: str) -> list[list[str]]:
    """`split(separator: " ")`: the Characters of each word, cut at Characters equal to a space."""
    characters = GRAPHEME.findall(text)
    out, word = [], []
    for character in characters:
        if character == SPACE:  # no other Character is canonically equivalent to U+0020
            if word:
                out.append(word)
            word = []
        else:
            word.append(character)
    if word:
        out.append(word)
    return out


def read_vocabulary(path: Path) -> dict[str, int]:
    """vocab.json as `JSONDecoder` reads it into `[String: Int]`, keyed by canonical spelling."""
    path = Path(path)
    vocabulary = {}

    def first_wins(pairs):
        for token, index in pairs:
            vocabulary.setdefault(canonical(token), index)
        return vocabulary

    try:
        json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=first_wins)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PipelineError(f"{path}: not a JSON vocabulary ({error}); restore CLIP's vocab.json") from None
    return vocabulary


def read_merges(path: Path) -> dict[tuple[str, str], int]:
    """merges.txt as the Swift reader reads it: canonical (first, second) -> line index."""
    path = Path(path)
    lines = path.read_bytes().split(b"\n")[:-1]  # what follows the last newline is never parsed
    merges = {}
    for index, line in enumerate(lines):
        if not line or line.startswith(b"#"):
            continue
        pair = [part for part in line.split(b" ") if part]  # Swift's split omits empty parts
        if len(pair) != 2:
            raise PipelineError(f"{path}: line {index + 1} is not a merge of two tokens; restore CLIP's merges.txt")
        first, second = (canonical(part.decode("utf-8", errors="replace")) for part in pair)
        merges[first, second] = index
    return merges


@dataclass(frozen=True)
class AppTokenizer:
    merges: dict[tuple[str, str], int]
    vocabulary: dict[str, int]
    pad_token: str = END_TOKEN
    # Words repeat across prompts; a word's tokens depend on its Characters alone (the app
    # recomputes them, to the same result).
    tokens_of_word: dict[tuple[str, ...], list[str]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_folder(cls, folder: Path, pad_token: str = END_TOKEN) -> "AppTokenizer":
        """The app's tokenizer over a resource folder's `merges.txt` and `vocab.json`."""
        folder = Path(folder)
        return cls(read_merges(folder / "merges.txt"), read_vocabulary(folder / "vocab.json"), pad_token)

    def token_ids(self, prompt: str, length: int = MAX_TOKENS) -> list[int]:
        """The ids TextEncoderXL.encode feeds: padded to `length`, then cut to it."""
        tokens = [START_TOKEN, *self.encode(prompt), END_TOKEN]
        tokens += [self.pad_token] * (length - len(tokens))
        unknown = self.vocabulary.get(UNKNOWN_TOKEN, 0)
        return [self.vocabulary.get(canonical(token), unknown) for token in tokens][:length]

    def encode(self, prompt: str) -> list[str]:
        """The tokens of `prompt`, spelled as Swift spells them."""
        tokens = []
        for word in words(lowercased(trimmed(prompt))):
            key = tuple(word)
            if key not in self.tokens_of_word:
                self.tokens_of_word[key] = self.encode_word(word)
            tokens += self.tokens_of_word[key]
        return tokens

    def encode_word(self, characters: list[str]) -> list[str]:
        tokens = list(characters)
        tokens[-1] += END_OF_WORD
        keys = [canonical(token) for token in tokens]
        while True:
            # A Set<TokenPair> keeps the first spelling of canonically equal pairs.
            mergeable = {}
            for at, key in enumerate(itertools.pairwise(keys)):
                if key in self.merges and key not in mergeable:
                    mergeable[key] = at
            if not mergeable:
                return tokens
            at = mergeable[min(mergeable, key=self.merges.__getitem__)]
            tokens, keys = merged(tokens, keys, (tokens[at], tokens[at + 1]))


def merged(tokens: list[str], keys: list[str], pair: tuple[str, str]) -> tuple[list[str], list[str]]:
    """`update(_:merging:)`: every occurrence of `pair`, left to right, joined into one token.

    `keys` are the tokens' canonical spellings; both lists come back updated. Swift appends the
    pair's own spelling wherever it matches, so that spelling replaces the token's.
    """
    first, second = pair
    key_first, key_second, key_pair = canonical(first), canonical(second), canonical(first + second)
    out, out_keys, index, last = [], [], 0, len(tokens) - 1
    while index <= last:
        try:
            match = keys.index(key_first, index)
        except ValueError:
            return out + tokens[index:], out_keys + keys[index:]
        out += tokens[index:match]
        out_keys += keys[index:match]
        if index < last and match == last:
            raise PipelineError(
                f"the app's BPETokenizer crashes on the word {''.join(tokens)!r} (update(_:merging:) reads past "
                f"its last token {tokens[-1]!r}): merges.txt has a merge whose first part ends in </w>; restore CLIP's"
            )
        if index < last and keys[match + 1] == key_second:
            out.append(first + second)
            out_keys.append(key_pair)
            index = match + 2
        else:
            out.append(first)
            out_keys.append(key_first)
            index = match + 1
    return out, out_keys


def app_token_ids(folder: Path, prompt: str) -> dict[str, list[int]]:
    """The ids the app feeds each text encoder for `prompt`, from a folder's tokenizer files."""
    return {name: AppTokenizer.from_folder(folder, pad).token_ids(prompt) for name, (pad, _) in APP_PADDING.items()}
