"""The app tokenizer against a second model written from the Swift source alone, on 3,000+ prompts.

`swift_tokenizer_reference` carries BPETokenizer.swift over line by line and spells out Swift's
String rules its own way (canonical equivalence by NFD, Foundation's whitespace set as
CFUniChar.c writes it); the module under test is `app_tokenizer`. The corpus is built from a
fixed seed: plain English of every length (past 77 tokens), glued punctuation, every kind of
whitespace, upper case, digits, accented Latin precomposed and decomposed (and text in CLIP's
byte symbols, whose merges a decomposed spelling must still find), CJK and Hangul, emoji
with ZWJ sequences and skin tones, combining marks (after letters, after spaces, first),
`#` and `</w>` inside words, the special-token strings, and the empty prompt.
"""

import copy
import dataclasses
import random
import unicodedata

import pytest
from swift_tokenizer_reference import BPETokenizer, SwiftString, text_encoder_cut, text_encoder_ids

from sd3coreml.errors import PipelineError
from sd3coreml.synthetic.clip_vocabulary import write_clip_tokenizer
from sd3coreml.verify.end_to_end.app_tokenizer import AppTokenizer

SEED = 24
PER_KIND = 280

ENGLISH = [
    "a", "an", "the", "photo", "of", "cat", "dog", "astronaut", "riding", "horse", "on", "moon",
    "mountain", "village", "quiet", "painting", "oil", "portrait", "robot", "in", "tailored", "suit",
    "cinematic", "light", "dramatic", "sunset", "over", "sea", "city", "night", "street", "rain",
    "neon", "reflections", "forest", "river", "bridge", "old", "castle", "fog", "morning", "golden",
    "hour", "close", "up", "wide", "angle", "lens", "bokeh", "highly", "detailed", "intricate", "sharp",
    "focus", "trending", "illustration", "watercolor", "sketch", "pencil", "drawing", "digital", "art",
    "concept", "character", "design", "fantasy", "science", "fiction", "spaceship", "planet", "galaxy",
    "stars", "nebula", "ocean", "waves", "beach", "palm", "trees", "desert", "dunes", "snow", "winter",
    "cabin", "fireplace", "cozy", "warm", "colors", "vibrant", "pastel", "minimalist", "abstract",
    "geometric", "shapes", "texture", "surreal", "dreamlike", "whimsical", "cute", "tiny", "giant",
    "ancient", "futuristic", "cyberpunk", "steampunk", "baroque", "renaissance", "studio", "lighting",
    "soft", "shadows", "volumetric", "octane", "render", "unreal", "engine", "8k", "photorealistic",
    "hyperrealistic", "masterpiece", "best", "quality", "award", "winning", "by", "and", "with",
    "under", "above", "behind", "near", "through"
]  # fmt: skip
PUNCTUATION = list(",.;:!?'\"()[]{}-_/\\*&%$@+=<>|~`^…")
# Every whitespace of Python's str.isspace() and of Foundation's whitespacesAndNewlines, and
# some that look like one and are neither.
WHITESPACE = (
    [chr(c) for c in (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0x85, 0xA0, 0x1680)]
    + [chr(c) for c in range(0x2000, 0x200C)]
    + [chr(c) for c in (0x2028, 0x2029, 0x202F, 0x205F, 0x3000, 0x180E, 0xFEFF, 0x200C, 0x200D, 0x2060)]
    + ["\r\n", "  ", "   "]
)
ACCENTED = [
    "café", "naïve", "résumé", "crème", "brûlée", "façade", "jalapeño", "zürich", "são", "paulo",
    "ångström", "øresund", "łódź", "dvořák", "señor", "ælfred", "smørrebrød", "garçon", "déjà", "vu",
    "piñata", "über", "straße", "ČESKÝ", "KRUMLOV", "ÉCOLE", "ÀÈÌÒÙ", "ÂÊÎÔÛ", "ÄËÏÖÜ",
    "āăąćĉċčďēĕėęěĝğġģĥĩīĭįĵķĺļľń", "ĀĂĄĆĈĊČĎĒĔĖĘĚĜĞĠĢĤĨĪĬĮĴĶĹĻĽŃ"
]  # fmt: skip
# Text shown as CLIP's byte symbols (UTF-8 read as GPT-2's byte alphabet: "’" is "âĢĻ", "…" is
# "âĢ¦", U+FE0F is "ï¸ı"), as pasted mojibake: its symbols have merges, so decomposed they test
# that merges are found by canonical equivalence.
BYTE_SYMBOLS = ["âĢĻ", "âĢ¦", "âĢľ", "ï¸ı", "ãĥ»", "à¸²", "ðŁĺĤ", "ãģ®", "âĺħ", "âľ¨", "ĠâĢĵ", "Ãł"]
GREEK_AND_CASES = ["ΟΔΟΣ", "Σίσυφος", "ΛΌΓΟΣ", "λόγος", "İstanbul", "DİYARBAKIR", "STRASSE", "ẞ", "ǅ", "ﬀ", "Ω", "K", "Å"]  # fmt: skip
SINGLETONS = ["\u037e", "\u0387", "\u1fef", "\u1ffd", "\u212a", "\u212b", "\u2126", "\u0340", "\u0341", "\u0374"]
CJK = ["東京", "富士山", "日本語", "中文", "夜景", "한국어", "서울", "カタカナ", "ひらがな", "か\u3099", "\u1100\u1161\u11a8", "ｆｕｌｌｗｉｄｔｈ"]  # fmt: skip
EMOJI = [
    "🌃", "🍵", "👍", "👍🏽", "👩‍🚀", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "❤", "🇯🇵", "🇫🇷🇩🇪", "1️⃣", "#️⃣", "🧑🏿‍🦱",
    "🤷🏻‍♀️", "👁️‍🗨️", "🐈‍⬛", "✨", "™", "©️",
]  # fmt: skip
MARKS = ["\u0301", "\u0300", "\u0308", "\u0327", "\u0302", "\u030a", "\u0332", "\u20dd", "\u0903", "\u200d", "\ufe0f",
         "\U0001f3fb", "\U0001f3ff", "\u3099", "\u0345", "\u0301\u0308"]  # fmt: skip
PREPENDED = ["\u0600", "\u06dd", "\u0d4e"]
SPECIAL = ["<|startoftext|>", "<|endoftext|>", "</w>", "#", "##", "#:", "#…", "#@", "# #", "!"]


def plain(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(ENGLISH) for _ in range(count))


def glued(rng, text):
    words = text.split(" ")
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(words))
        mark = "".join(rng.choice(PUNCTUATION) for _ in range(rng.randint(1, 3)))
        words[at] = mark + words[at] if rng.random() < 0.3 else words[at] + mark
    return " ".join(words)


def spaced(rng, text):
    words = text.split(" ")
    joined = words[0]
    for word in words[1:]:
        joined += (rng.choice(WHITESPACE) if rng.random() < 0.4 else " ") + word
    ends = [rng.choice(WHITESPACE) * rng.randint(0, 2) for _ in range(2)]
    return ends[0] + joined + ends[1]


def cased(rng, text):
    return rng.choice([str.upper, str.title, str.capitalize, lambda t: "".join(
        c.upper() if rng.random() < 0.5 else c for c in t)])(text)  # fmt: skip


def with_digits(rng, text):
    numbers = ["4k", "8k", "1920x1080", "3.5", "2024", "007", "100%", "1st", "v2", "f/1.8", "35mm", "0", "42"]
    words = text.split(" ")
    for _ in range(rng.randint(1, 3)):
        words.insert(rng.randrange(len(words) + 1), rng.choice(numbers))
    return " ".join(words)


def accented(rng, text):
    words = text.split(" ")
    for _ in range(rng.randint(1, 3)):
        words.insert(rng.randrange(len(words) + 1), rng.choice(ACCENTED + GREEK_AND_CASES + SINGLETONS + BYTE_SYMBOLS))
    joined = " ".join(words)
    form = rng.choice(["NFC", "NFD", "NFKC", "mixed"])
    if form == "mixed":
        return " ".join(unicodedata.normalize(rng.choice(["NFC", "NFD"]), word) for word in joined.split(" "))
    return unicodedata.normalize(form, joined)


def scripts(rng, text):
    words = text.split(" ")
    for _ in range(rng.randint(1, 3)):
        piece = rng.choice(CJK)
        at = rng.randrange(len(words))
        words[at] = words[at] + piece if rng.random() < 0.3 else piece
    return " ".join(words)


def emoji(rng, text):
    words = text.split(" ")
    for _ in range(rng.randint(1, 3)):
        piece = rng.choice(EMOJI)
        at = rng.randrange(len(words) + 1)
        where = rng.random()
        if where < 0.3 and at < len(words):
            words[at] += piece  # glued
        elif where < 0.5:
            words.insert(at, piece[1:] if len(piece) > 1 else piece)  # a modifier or joiner first
        else:
            words.insert(at, piece)
    return " ".join(words)


def marked(rng, text):
    out = []
    for character in text:
        out.append(character)
        if rng.random() < 0.12:
            out.append(rng.choice(MARKS))  # after a letter, or after a space: no split there
    if rng.random() < 0.3:
        out.insert(0, rng.choice(MARKS))
    if rng.random() < 0.3:
        at = rng.randrange(len(out) + 1)
        out.insert(at, rng.choice(PREPENDED))
    return "".join(out)


def special(rng, text):
    words = text.split(" ")
    for _ in range(rng.randint(1, 3)):
        piece = rng.choice(SPECIAL)
        at = rng.randrange(len(words))
        choice = rng.random()
        if choice < 0.3:
            words[at] = words[at] + piece
        elif choice < 0.5:
            cut = rng.randrange(len(words[at]) + 1)
            words[at] = words[at][:cut] + piece + words[at][cut:]
        else:
            words.insert(at, piece)
    return " ".join(words)


def everything(rng, text):
    for change in rng.sample([glued, spaced, cased, with_digits, accented, scripts, emoji, marked, special], 3):
        text = change(rng, text)
    return text


KINDS = [glued, spaced, cased, with_digits, accented, scripts, emoji, marked, special, everything]


def corpus() -> list[str]:
    rng = random.Random(SEED)
    prompts = ["", " ", "\u200b", "\x1c", " \u0301", "\u0301", "\t\n", *SPECIAL, *SINGLETONS, *GREEK_AND_CASES]
    for count in range(1, 101):  # every length, to well past 77 tokens
        prompts += [plain(rng, count) for _ in range(3)]
    for kind in KINDS:
        prompts += [kind(rng, plain(rng, rng.choice([1, 2, 3, 5, 8, 13, 21, 40]))) for _ in range(PER_KIND)]
    return prompts


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    write_clip_tokenizer(folder)
    return folder


def remembering_words(reference: BPETokenizer) -> BPETokenizer:
    """The reference, each distinct word encoded once (words repeat across the corpus)."""
    encode_word, seen = reference.encode_word, {}

    def encode(word):
        key = tuple(character.text for character in word)
        if key not in seen:
            seen[key] = encode_word(word)
        return seen[key]

    reference.encode_word = encode
    return reference


def test_the_module_and_the_swift_reference_agree_on_every_prompt(clip_files):
    prompts = corpus()
    assert len(prompts) >= 3000 and len(set(prompts)) >= 3000
    module = AppTokenizer.from_folder(clip_files)
    module_g = dataclasses.replace(module, pad_token="!")  # TextEncoder2's tokenizer: pads with "!"
    reference = remembering_words(BPETokenizer(clip_files / "merges.txt", clip_files / "vocab.json"))
    reference_g = copy.copy(reference)
    reference_g.pad_token = SwiftString("!")
    disagreements, truncated = [], 0
    for index, prompt in enumerate(prompts):
        tokens, ids = reference.tokenize(prompt, min_count=77)  # padded, not yet cut
        truncated += len(tokens) > 77
        module_tokens = ["<|startoftext|>", *module.encode(prompt), "<|endoftext|>"]
        if tokens[: len(module_tokens)] != module_tokens or len(tokens) != max(77, len(module_tokens)):
            disagreements.append((prompt, "tokens"))
        if module.token_ids(prompt) != text_encoder_cut(tokens, ids)[1]:
            disagreements.append((prompt, "TextEncoder ids"))
        if index % 4 == 0 and module_g.token_ids(prompt) != text_encoder_ids(reference_g, prompt)[1]:
            disagreements.append((prompt, "TextEncoder2 ids"))
    assert not disagreements, f"{len(disagreements)} disagreements, first: {disagreements[:5]}"
    assert truncated > 100  # long prompts lose their EOS in both


def test_both_models_stop_where_the_app_crashes(tmp_path):
    (tmp_path / "merges.txt").write_text("#version: 0.2\n< /\n</ w\n</w >\nc </w>\nc</w> b\n")
    (tmp_path / "vocab.json").write_text('{"<|startoftext|>": 0, "<|endoftext|>": 1}')
    with pytest.raises(IndexError):
        BPETokenizer(tmp_path / "merges.txt", tmp_path / "vocab.json").encode("c</w>bxc")
    with pytest.raises(PipelineError):
        AppTokenizer.from_folder(tmp_path).encode("c</w>bxc")
