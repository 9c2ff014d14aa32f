"""The staged MMDiT equals diffusers' whole transformer, and each piece's tensors are exactly its modules'."""

import json

import pytest
import torch
from diffusers import SD3Transformer2DModel
from harness import REPO
from safetensors import safe_open

from sd3coreml.convert.mmdit_modules import build_block_range, build_conditioning, build_input_stage
from sd3coreml.inputs.geometry import MMDiTShape
from sd3coreml.stages import stage_ranges
from sd3coreml.synthetic.checkpoints import write_synthetic_transformer

DEMO_LAYOUT = [1, 2, 2]


# The tiny SD3.5 has a second image attention in blocks 0 and 1: with DEMO_LAYOUT its Stage1
# has it, Stage2 mixes a block with and one without, Stage3 (the head) has none.
PINNED = {"tiny": "sd3-tiny.json", "sd3.5-tiny": "sd3.5-tiny.json"}


@pytest.fixture(scope="module", params=sorted(PINNED))
def tiny_transformer(tmp_path_factory, request):
    folder = tmp_path_factory.mktemp(request.param)
    weights, config = folder / "t.safetensors", folder / "t.json"
    write_synthetic_transformer(request.param, 4, weights, config)
    return weights, json.loads((REPO / "config" / "transformers" / PINNED[request.param]).read_text())


def test_synthetic_config_is_the_pinned_demo_config(tiny_transformer, tmp_path):
    weights, pinned = tiny_transformer
    written = json.loads(weights.with_suffix(".json").read_text())
    public = [{k: v for k, v in config.items() if not k.startswith("_")} for config in (written, pinned)]
    assert public[0] == public[1]


def test_stages_in_sequence_equal_the_whole_transformer(tiny_transformer):
    weights, config = tiny_transformer
    shape = MMDiTShape.from_config(config, 16, 16)
    whole = SD3Transformer2DModel.from_config(config).eval()
    with safe_open(str(weights), framework="pt") as handle:
        whole.load_state_dict({name: handle.get_tensor(name) for name in handle.keys()}, strict=True)

    generator = torch.Generator().manual_seed(1)
    latent = torch.randn(1, 16, 16, 16, generator=generator)
    text = torch.randn(1, 154, shape.joint_attention_dim, generator=generator)
    pooled = torch.randn(1, shape.pooled_projection_dim, generator=generator)
    timestep = torch.tensor([750.0])
    with torch.no_grad():
        expected = whole(latent, text, pooled, timestep).sample
        modulation = build_conditioning(shape, weights)(pooled.reshape(1, -1, 1, 1), timestep)
        image, tokens = build_input_stage(shape, weights)(latent, text.transpose(1, 2).unsqueeze(2), modulation)
        for block_range in stage_ranges(DEMO_LAYOUT, shape.depth):
            out = build_block_range(shape, block_range.start, block_range.end, weights)(image, tokens, modulation)
            if not block_range.has_head:
                image, tokens = out
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_each_pieces_tensor_prefixes_are_exactly_its_modules_tensors(tiny_transformer):
    # The disk estimate before a build counts a planned piece by these prefixes.
    from sd3coreml.convert.mmdit_modules import MMDiTBlockRange, MMDiTConditioning, MMDiTInputStage
    from sd3coreml.inputs.checkpoint import (
        CONDITIONING_PREFIXES,
        INPUT_STAGE_PREFIXES,
        block_range_prefixes,
        sd3_tensor_shapes,
    )

    _, config = tiny_transformer
    shape = MMDiTShape.from_config(config, 16, 16)
    names = set(sd3_tensor_shapes(config))
    with torch.device("meta"):
        pieces = {
            CONDITIONING_PREFIXES: MMDiTConditioning(shape),
            INPUT_STAGE_PREFIXES: MMDiTInputStage(shape),
            block_range_prefixes(0, 2, False): MMDiTBlockRange(shape, 0, 2),
            block_range_prefixes(3, 5, True): MMDiTBlockRange(shape, 3, 5),
        }
    for prefixes, module in pieces.items():
        assert set(module.state_dict()) == {name for name in names if name.startswith(prefixes)}
