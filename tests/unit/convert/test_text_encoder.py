"""The text encoders' pooled output: transformers' own position, on any executor and any ids.

The app pads CLIP-L's ids with EOS (49407) and CLIP-G's with "!" (0); transformers pools at the
first largest id (legacy configs, `eos_token_id` 2) or at the first EOS. Ties must not decide:
MIL leaves the winner of a `reduce_argmax` tie unspecified.
"""

import numpy as np
import pytest
import torch
from coremltools.converters.mil import Builder as mb

from sd3coreml.contract import BOS, EOS, LEGACY_EOS_TOKEN_ID, MAX_TOKENS
from sd3coreml.convert.text_encoder import load_text_encoder, pooled_position
from sd3coreml.verify.measure import psnr
from sd3coreml.verify.mil_executor import run_package, run_program

FP16_BAR_DB = 60
PROMPT = [320, 1125, 539, 320, 2368]  # "a photo of a cat"


def ids_of(kind: str) -> np.ndarray:
    ids = np.full((1, MAX_TOKENS), float(EOS), dtype=np.float32)
    words = PROMPT
    if kind == "unknown-character-mid-prompt":  # the app maps a character outside CLIP's 256 to EOS
        words = [320, EOS, 1125, 539]
    if kind == "eos-truncated":  # a long prompt loses its EOS: BOS and 76 words
        words = [320 + (index * 37) % 40000 for index in range(MAX_TOKENS - 1)]
    ids[0, : len(words) + 2] = [BOS, *words, EOS][:MAX_TOKENS]
    if kind == "zero-padded":
        ids[0, len(words) + 2 :] = 0.0
    return ids


KINDS = ["eos-padded", "zero-padded", "unknown-character-mid-prompt", "eos-truncated"]


def transformers_position(ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """modeling_clip.CLIPTextTransformer's rule, with torch's argmax (first of ties)."""
    if eos_token_id == LEGACY_EOS_TOKEN_ID:
        return ids.argmax(dim=-1)
    return (ids == eos_token_id).int().argmax(dim=-1)


@pytest.mark.parametrize("eos_token_id", [LEGACY_EOS_TOKEN_ID, EOS])
@pytest.mark.parametrize("kind", KINDS)
def test_pooled_position_is_transformers_rule(kind, eos_token_id):
    ids = torch.from_numpy(ids_of(kind)).to(torch.int32)
    assert torch.equal(pooled_position(ids, eos_token_id), transformers_position(ids, eos_token_id))


def test_the_tie_executor_does_send_ties_elsewhere():
    """Without this the test below would hold for any program."""

    @mb.program(input_specs=[mb.TensorSpec((1, 8))])
    def argmax(x):
        return mb.reduce_argmax(x=x, axis=-1)

    ties = np.array([[0, 5, 1, 5, 5, 2, 0, 1]], dtype=np.float32)
    outputs = [next(iter(run_program(argmax, {"x": ties}, ties=side).values())) for side in ("first", "last")]
    assert [int(np.ravel(value)[0]) for value in outputs] == [1, 4]


@pytest.fixture(scope="module")
def encoders(demo_workdir):
    root = demo_workdir / "results" / "demo"
    components = root / "checkpoints" / "tiny-components-seed0"
    packages = root / "text_encoders" / "iOS18"
    return {
        name: (packages / f"{name}.fp16.mlpackage", load_text_encoder(components / folder))
        for name, folder in (("TextEncoder", "text_encoder"), ("TextEncoder2", "text_encoder_2"))
    }


def test_the_tiny_encoders_have_one_pooling_rule_each(encoders):
    rules = {name: encoder.config.eos_token_id for name, (_, encoder) in encoders.items()}
    assert rules == {"TextEncoder": LEGACY_EOS_TOKEN_ID, "TextEncoder2": EOS}


@pytest.mark.parametrize("name", ["TextEncoder", "TextEncoder2"])
@pytest.mark.parametrize("kind", KINDS)
def test_pooled_output_is_tie_free_and_stock(encoders, name, kind):
    package, encoder = encoders[name]
    ids = ids_of(kind)
    first, last = (run_package(package, {"input_ids": ids}, ties=side)["pooled_outputs"] for side in ("first", "last"))
    np.testing.assert_array_equal(first, last)
    with torch.no_grad():
        stock = encoder(input_ids=torch.from_numpy(ids).long()).text_embeds.numpy()
    assert psnr(stock, first.astype(np.float32)) >= FP16_BAR_DB
