"""The text encoders' pooled output: transformers' own position, on any executor and any ids.

The app pads CLIP-L's ids with EOS (49407) and CLIP-G's with "!" (0); transformers pools at the
first largest id (legacy configs, `eos_token_id` 2) or at the first EOS. Ties must not decide:
MIL leaves the winner of a `reduce_argmax` tie unspecified.
"""

import numpy as np
import pytest
import torch
from coremltools.converters.mil import Builder as mb
from prompt_ids import KINDS, ids_of

from sd3coreml.contract import EOS, LEGACY_EOS_TOKEN_ID
from sd3coreml.convert.text_encoder import pooled_position
from sd3coreml.verify.mil_executor import run_program


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
