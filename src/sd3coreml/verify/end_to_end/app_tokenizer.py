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
"""

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import regex

from sd3coreml.contract import APP_PADDING, MAX_TOKENS
from sd3coreml.errors import PipelineError

START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
UNKNOWN_TOKEN = END_TOKEN
END_OF_WORD = "</w>"
GRAPHEME = regex.compile(r"\X")


def read_merges(path: Path) -> dict[tuple[str, str], int]:
    """merges.txt as the Swift reader reads it: (first, second) -> line index."""
    path = Path(path)
    lines = path.read_bytes().split(b"\n")[:-1]  # what follows the last newline is never parsed
    merges = {}
    for index, line in enumerate(lines):
        if not line or line.startswith(b"#"):
            continue
        pair = [part for part in line.split(b" ") if part]  # Swift's split omits empty parts
        if len(pair) != 2:
            raise PipelineError(f"{path}: line {index + 1} is not a merge of two tokens; restore CLIP's merges.txt")
        merges[pair[0].decode("utf-8"), pair[1].decode("utf-8")] = index
    return merges


@dataclass(frozen=True)
class AppTokenizer:
    merges: dict[tuple[str, str], int]
    vocabulary: dict[str, int]
    pad_token: str = END_TOKEN

    @classmethod
    def from_folder(cls, folder: Path, pad_token: str = END_TOKEN) -> "AppTokenizer":
        """The app's tokenizer over a resource folder's `merges.txt` and `vocab.json`."""
        vocabulary = json.loads((Path(folder) / "vocab.json").read_text(encoding="utf-8"))
        return cls(read_merges(Path(folder) / "merges.txt"), vocabulary, pad_token)

    def token_ids(self, prompt: str, length: int = MAX_TOKENS) -> list[int]:
        """The ids TextEncoderXL.encode feeds: padded to `length`, then cut to it."""
        tokens = [START_TOKEN, *self.encode(prompt), END_TOKEN]
        tokens += [self.pad_token] * (length - len(tokens))
        unknown = self.vocabulary.get(UNKNOWN_TOKEN, 0)
        return [self.vocabulary.get(token, unknown) for token in tokens][:length]

    def encode(self, prompt: str) -> list[str]:
        words = [word for word in prompt.strip().lower().split(" ") if word]
        return [token for word in words for token in self.encode_word(word)]

    def encode_word(self, word: str) -> list[str]:
        tokens = GRAPHEME.findall(word)
        tokens[-1] += END_OF_WORD
        while True:
            mergeable = {pair for pair in itertools.pairwise(tokens) if pair in self.merges}
            if not mergeable:
                return tokens
            tokens = merged(tokens, min(mergeable, key=self.merges.__getitem__))


def merged(tokens: list[str], pair: tuple[str, str]) -> list[str]:
    """Every occurrence of `pair`, left to right, joined into one token."""
    first, second = pair
    out, index = [], 0
    while index < len(tokens):
        if tokens[index] == first and index + 1 < len(tokens) and tokens[index + 1] == second:
            out.append(first + second)
            index += 2
        else:
            out.append(tokens[index])
            index += 1
    return out


def app_token_ids(folder: Path, prompt: str) -> dict[str, list[int]]:
    """The ids the app feeds each text encoder for `prompt`, from a folder's tokenizer files."""
    return {name: AppTokenizer.from_folder(folder, pad).token_ids(prompt) for name, (pad, _) in APP_PADDING.items()}
