"""The demo's text encoder packages pool where transformers pools, whichever way the MIL executor breaks ties."""

import numpy as np
import pytest
import torch
from prompt_ids import KINDS, ids_of

from sd3coreml.contract import EOS, LEGACY_EOS_TOKEN_ID
from sd3coreml.convert.text_encoder import load_text_encoder
from sd3coreml.verify.measure import psnr
from sd3coreml.verify.mil_executor import run_package

FP16_BAR_DB = 60


@pytest.fixture(scope="module")
def encoders(demo_build):
    root = demo_build / "results" / "demo"
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
