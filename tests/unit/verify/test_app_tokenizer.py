"""The app's tokenizer (Apple's Swift BPETokenizer, as MobileDiffuser bfe2f28 runs it), step by step."""

import json

import pytest

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
