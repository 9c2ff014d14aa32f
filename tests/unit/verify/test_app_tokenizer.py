"""The app's tokenizer (Apple's Swift BPETokenizer, as MobileDiffuser bfe2f28 runs it), step by step."""

import json

import pytest

from sd3coreml.errors import PipelineError
from sd3coreml.inputs.tokenizer import load_clip_tokenizer
from sd3coreml.synthetic.clip_vocabulary import write_clip_tokenizer
from sd3coreml.verify.end_to_end.app_tokenizer import AppTokenizer, read_merges

VOCAB = [
    "!", "a", "c", "d", "e", "h", "l", "o", "r", "t", "w", "#", ",",
    "a</w>", "d</w>", "e</w>", "o</w>", "t</w>", "#</w>", ",</w>", "é</w>",
    "he", "ll", "hell", "hello</w>", "wo", "rl", "worl", "world</w>", "ca", "cat</w>", "##</w>",
    "<|startoftext|>", "<|endoftext|>",
]  # fmt: skip
# Line index: 0 a version line (skipped: '#'), 3 empty (skipped), 6 a merge starting with '#'
# (skipped, as 6 of CLIP's real merges are), 12 the last line, with no newline (never parsed).
MERGES = "#version: 0.2\nh e\nl l\n\nhe ll\nhell o</w>\n# #</w>\nw o\nr l\nwo rl\nworl d</w>\nc a\nca t</w>"
BOS, EOS = VOCAB.index("<|startoftext|>"), VOCAB.index("<|endoftext|>")


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(VOCAB)}))
    (tmp_path / "merges.txt").write_text(MERGES)
    return tmp_path


def test_merges_are_read_as_the_swift_reader_reads_them(folder):
    merges = read_merges(folder / "merges.txt")
    assert merges == {
        ("h", "e"): 1, ("l", "l"): 2, ("he", "ll"): 4, ("hell", "o</w>"): 5, ("w", "o"): 7,
        ("r", "l"): 8, ("wo", "rl"): 9, ("worl", "d</w>"): 10, ("c", "a"): 11,
    }  # fmt: skip


@pytest.mark.parametrize(
    "prompt, tokens",
    [
        # h e l l o</w>: (h,e) rank 1 -> he; (l,l) 2 -> ll; (he,ll) 4 -> hell; (hell,o</w>) 5.
        # w o r l d</w>: (w,o) 7 -> wo; (r,l) 8 -> rl; (wo,rl) 9 -> worl; (worl,d</w>) 10.
        ("  Hello WORLD ", ["hello</w>", "world</w>"]),
        # c a t</w>: (c,a) 11 -> ca; (ca,t</w>) was the last line, without newline: no merge.
        ("cat", ["ca", "t</w>"]),
        # No regex pre-split: "cat," is one word, its comma the word's end.
        ("cat,", ["ca", "t", ",</w>"]),
        # "# #</w>" starts with '#': skipped, so "##" stays two tokens (Hugging Face: "##</w>").
        ("##", ["#", "#</w>"]),
        # Split on spaces only, runs of spaces give no empty words.
        ("a   e", ["a</w>", "e</w>"]),
    ],
)
def test_words_become_these_tokens(folder, prompt, tokens):
    assert AppTokenizer.from_folder(folder).encode(prompt) == tokens


def test_ids_pad_map_unknown_characters_to_eos_and_drop_the_tail(folder):
    tokenizer = AppTokenizer.from_folder(folder)
    hello, world = VOCAB.index("hello</w>"), VOCAB.index("world</w>")
    assert tokenizer.token_ids("hello world", length=6) == [BOS, hello, world, EOS, EOS, EOS]
    # TextEncoder2's tokenizer pads with "!" (id 0 in CLIP, here too).
    assert AppTokenizer.from_folder(folder, "!").token_ids("hello", length=5) == [BOS, hello, EOS, 0, 0]
    # é is a byte symbol of its own; 字 is none, nor a tab: each is the unknown id, EOS.
    assert tokenizer.token_ids("é 字 a\te", length=8) == [BOS, VOCAB.index("é</w>"), EOS, 1, EOS, 15, EOS, EOS]
    # Too long: the tail goes, EOS with it.
    assert tokenizer.token_ids("hello world hello", length=4) == [BOS, hello, world, hello]


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    write_clip_tokenizer(folder)
    return folder


@pytest.mark.parametrize("prompt", ["a photo of a cat", "an astronaut riding a horse on the moon", "zebra"])
def test_on_clips_files_plain_words_give_hugging_faces_ids(clip_files, prompt):
    hugging_face = load_clip_tokenizer(clip_files)(prompt, padding="max_length", max_length=77).input_ids
    assert AppTokenizer.from_folder(clip_files).token_ids(prompt) == hugging_face


def test_on_clips_files_the_app_parts_from_hugging_face_where_its_algorithm_does(clip_files):
    app, hugging_face = AppTokenizer.from_folder(clip_files), load_clip_tokenizer(clip_files)
    assert app.token_ids("a photo of a cat")[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    for prompt in ("##", "#:", "robot,"):
        assert app.token_ids(prompt) != hugging_face(prompt, padding="max_length", max_length=77).input_ids, prompt


# Swift's String rules, on CLIP's real files. Each case: the prompt, the ids between BOS and EOS
# (padding follows), hand-checked in vocab.json and merges.txt, and the Swift that decides them
# (BPETokenizer.swift at MobileDiffuser bfe2f28 unless named otherwise).
BOS_ID, EOS_ID = 49406, 49407
SWIFT_STRING_CASES = [
    # `vocabulary[$0, default: unknownTokenID]` hashes by canonical equivalence: e + U+0301 finds
    # "é</w>" (421); Python's dict does not (49407).
    pytest.param("e\u0301", [421], id="decomposed-e-acute-finds-precomposed"),
    # U+037E GREEK QUESTION MARK is canonically ";" : ";</w>" (282). U+1FEF GREEK VARIA is "`" (319).
    pytest.param("\u037e", [282], id="greek-question-mark-is-semicolon"),
    pytest.param("\u1fef", [319], id="greek-varia-is-grave"),
    # c a f e+U+0301</w>: (a,f) rank 191 -> af; (c,af) 2960 -> caf (3471); é</w> (421) by equivalence:
    # the same ids as the precomposed spelling.
    pytest.param("cafe\u0301", [3471, 421], id="decomposed-cafe"),
    pytest.param("caf\u00e9", [3471, 421], id="precomposed-cafe"),
    # `merges[$0] != nil` hashes TokenPair's Strings by equivalence too: a+U+0302, g+U+0327 are
    # "â", "ģ", merge ("â","ģ") at rank 1156 -> "âģ" (1667), then "x</w>" (343). Looking up only the
    # vocabulary by equivalence would give "â" (158), "ģ" (223), 343.
    pytest.param("a\u0302g\u0327x", [1667, 343], id="decomposed-pair-finds-its-merge"),
    # `input.trimmingCharacters(in: .whitespacesAndNewlines)`: CFUniChar.c's set has no U+001C..U+001F
    # (Python's strip() drops them): U+001C is kept, its own Character, unknown (49407), then
    # c a t</w>: (a,t</w>) 25, (c,at</w>) 1857 -> "cat</w>" (2368).
    pytest.param("\x1ccat", [49407, 2368], id="u001c-not-trimmed"),
    # c a t U+001F</w>: (a,t) 16, (c,at) 970 -> "cat" (1481), then U+001F</w> unknown.
    pytest.param("cat\x1f", [1481, 49407], id="u001f-not-trimmed"),
    # ... and holds U+2000..U+200B: a trailing ZERO WIDTH SPACE goes (Python keeps it: "cat", unknown).
    pytest.param("cat\u200b", [2368], id="u200b-trimmed"),
    # Both drop these: U+3000, U+2029, U+0085, tab, vertical tab.
    pytest.param("\u3000\tcat\u2029\x85\x0b", [2368], id="shared-whitespace-trimmed"),
    # `normalized.split(separator: " ")` compares Characters: a space followed by U+0301 is one
    # Character, no space, so "a" stays inside the word: "a" (64, no </w>), " ́" unknown, "b</w>" (321).
    # Python's split(" ") gives "a</w>" (320) instead of 64.
    pytest.param("a \u0301b", [64, 49407, 321], id="space-then-combining-mark-no-split"),
    pytest.param("a \u200db", [64, 49407, 321], id="space-then-zwj-no-split"),
    pytest.param("a \ufe0fb", [64, 49407, 321], id="space-then-variation-selector-no-split"),
    pytest.param("a \U0001f3fd", [64, 49407], id="space-then-skin-tone-no-split"),
    pytest.param("a \u0903b", [64, 49407, 321], id="space-then-spacing-mark-no-split"),
    # Two spaces, the second carrying the mark: the first splits, the word after starts with " ́".
    pytest.param("a  \u0301b", [320, 49407, 321], id="second-space-carries-the-mark"),
    # `var tokens = word.map { String($0) }` iterates Characters: CR LF is one (unknown), a flag, a ZWJ
    # sequence, an emoji with skin tone, conjoining Hangul jamo are one unknown each.
    pytest.param("a\r\nb", [64, 49407, 321], id="crlf-one-character"),
    pytest.param("\U0001f1ef\U0001f1f5 \U0001f469\u200d\U0001f680 \U0001f44d\U0001f3fd", [49407] * 3, id="emoji-clusters"),
    pytest.param("\u1100\u1161", [49407], id="hangul-jamo-one-character"),
    # `lowercased()` maps U+0130 to i + U+0307, one Character that is no vocabulary symbol (as in Python).
    pytest.param("\u0130", [49407], id="dotted-capital-i"),
    # The app package's own test (StableDiffusionTests.swift, testBPETokenizer: tokenize(input:)).
    pytest.param(
        "a photo of an astronaut riding a horse on mars",
        [320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496], id="app-test-astronaut",
    ),
    pytest.param(
        "Apple CoreML developer tools on a Macbook Air are fast",
        [3055, 19622, 5780, 10929, 5771, 525, 320, 20617, 1922, 631, 1953], id="app-test-coreml",
    ),
]  # fmt: skip


@pytest.fixture(scope="module")
def clip_tokenizer(clip_files):
    return AppTokenizer.from_folder(clip_files)


@pytest.mark.parametrize("prompt, ids", SWIFT_STRING_CASES)
def test_on_clips_files_swift_string_rules_decide_the_ids(clip_tokenizer, prompt, ids):
    expected = [BOS_ID, *ids, EOS_ID]
    assert clip_tokenizer.token_ids(prompt) == expected + [EOS_ID] * (77 - len(expected))


@pytest.mark.parametrize(
    "prompt, tokens",
    [
        # `lowercased()` maps scalar by scalar: a final capital sigma becomes σ (Python: ς).
        # Both are unknown ids; the tokens differ.
        ("ΟΔΟΣ", ["ο", "δ", "ο", "σ</w>"]),
        # A prepended mark (U+0600) joins the space after it into one Character: no split.
        ("a\u0600 b", ["a", "\u0600 ", "b</w>"]),
        # `pairs(for:)` fills a Set<TokenPair>, which keeps the first of two equivalent pairs, and
        # `update` appends `bigram.first + bigram.second`: ("a+U+0302", "g+U+0327") ≡ ("â", "ģ"),
        # rank 1156, merges both places in the first one's spelling (ids 1667, 1667, 343 either way).
        ("a\u0302g\u0327\u00e2\u0123x", ["a\u0302g\u0327", "a\u0302g\u0327", "x</w>"]),
    ],
)
def test_on_clips_files_tokens_follow_swifts_characters(clip_tokenizer, prompt, tokens):
    assert clip_tokenizer.encode(prompt) == tokens


def test_vocabulary_keeps_the_first_of_equal_or_equivalent_keys(tmp_path):
    """JSONDecoder (swift-foundation `_setIfNil`) keeps the first key; Python's json the last."""
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    (tmp_path / "vocab.json").write_text(
        '{"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "a</w>": 3, "\u00e9</w>": 4, "e\u0301</w>": 5}',
        encoding="utf-8",
    )
    tokenizer = AppTokenizer.from_folder(tmp_path)
    assert tokenizer.token_ids("a", length=3) == [0, 2, 1]
    assert tokenizer.token_ids("e\u0301", length=3) == [0, 4, 1]


def test_merges_lines_are_repaired_utf8_and_matched_by_equivalence(tmp_path):
    # `String(bytes:)` repairs an ill-formed byte to U+FFFD instead of refusing the line; a merge
    # written decomposed (e + U+0301) applies to a precomposed é.
    (tmp_path / "merges.txt").write_bytes(b"#version: 0.2\n\xff a\ne\xcc\x81 x</w>\n")
    assert read_merges(tmp_path / "merges.txt") == {("\ufffd", "a"): 1, ("\u00e9", "x</w>"): 2}
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "\u00e9x</w>": 2}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    assert AppTokenizer.from_folder(tmp_path).token_ids("\u00e9x", length=3) == [0, 2, 1]


def test_a_word_that_crashes_the_app_is_refused(tmp_path):
    """update(_:merging:) tests `index < tokens.count - 1`, not the match's index: when the pair's
    first token is found only at the last position it reads past the end, and the app traps.

    c < / w > b x c</w>: (<,/) 1, (</,w) 2, (</w,>) 3, (c,</w>) 4 leave [c</w>, b, x, c</w>]; merging
    (c</w>, b) at rank 5 then finds c</w> again only last, with index 2 < 3.
    """
    (tmp_path / "merges.txt").write_text("#version: 0.2\n< /\n</ w\n</w >\nc </w>\nc</w> b\n")
    (tmp_path / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1}))
    tokenizer = AppTokenizer.from_folder(tmp_path)
    with pytest.raises(PipelineError, match="crashes on the word"):
        tokenizer.encode("c</w>bxc")
    assert tokenizer.encode("c</w>bx") == ["c</w>b", "x</w>"]  # no match left at the end: no crash


def test_the_report_lists_where_swifts_string_rules_part_the_app_from_diffusers(tmp_path):
    from sd3coreml.synthetic.clip_vocabulary import write_sd3_tokenizers
    from sd3coreml.verify.end_to_end.check import TOKENIZATION_PROMPTS, tokenization_differences

    write_sd3_tokenizers(tmp_path)
    vocab = json.loads((tmp_path / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    rows = tokenization_differences(tmp_path / "tokenizer", tmp_path, TOKENIZATION_PROMPTS[-2:])
    by_prompt = {(row["prompt"], row["encoder"]): row for row in rows}
    assert len(rows) == 4  # both prompts, both encoders
    decomposed = by_prompt[TOKENIZATION_PROMPTS[-2], "TextEncoder"]
    # "cafe+U+0301": "caf" and "é</w>" by canonical equivalence, where Hugging Face has one "café</w>".
    assert decomposed["first_difference"] == 1
    assert decomposed["app_ids"] == [vocab["caf"], vocab["é</w>"], vocab["au</w>"], vocab["la"]]
    joined = by_prompt[TOKENIZATION_PROMPTS[-1], "TextEncoder2"]
    # "cat" then " ́" stay one word: "cat" without </w>, the space-and-mark unknown; U+200B trimmed.
    assert joined["first_difference"] == 2
    assert joined["app_ids"] == [vocab["cat"], EOS_ID, vocab["on</w>"], vocab["a</w>"]]
