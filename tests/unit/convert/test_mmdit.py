"""The staged MMDiT equals diffusers' whole transformer, and each stage holds only its blocks."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import SD3Transformer2DModel
from harness import REPO
from safetensors import safe_open

from sd3coreml.convert.mmdit_modules import build_block_range, build_conditioning, build_input_stage
from sd3coreml.inputs.geometry import MMDiTShape
from sd3coreml.pipeline.plan import stage_ranges
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


def blob_constants(package: Path) -> dict[str, int]:
    """Weight constants stored in the package's blob file: {name: element count}."""
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString((package / "Data" / "com.apple.CoreML" / "model.mlmodel").read_bytes())
    block = next(iter(spec.mlProgram.functions["main"].block_specializations.values()))
    constants = {}
    for operation in block.operations:
        value = operation.attributes["val"] if operation.type == "const" else None
        if value is not None and value.HasField("blobFileValue"):
            dims = [d.constant.size for d in value.type.tensorType.dimensions]
            constants[operation.outputs[0].name] = int(np.prod(dims))
    return constants


def checkpoint_sizes(weights: Path, prefixes: tuple[str, ...]) -> int:
    with safe_open(str(weights), framework="pt") as handle:
        return sum(int(np.prod(handle.get_slice(k).get_shape())) for k in handle.keys() if k.startswith(prefixes))


@pytest.mark.parametrize("model, checkpoint", [("4step", "tiny-seed4"), ("sd35", "sd3.5-tiny-seed4")])
@pytest.mark.parametrize("start, end, head", [(0, 1, ""), (1, 3, ""), (3, 5, "_head")])
def test_stage_package_holds_only_its_block_range(demo_workdir, model, checkpoint, start, end, head):
    root = demo_workdir / "results" / "demo"
    package = root / "mmdit" / model / "iOS18" / "latent16x16" / f"blocks{start}-{end}{head}.fp16.mlpackage"
    prefixes = tuple(f"transformer_blocks.{index}." for index in range(start, end))
    prefixes += ("norm_out.", "proj_out.") if head else ()
    constants = blob_constants(package)
    # Constant names carry the module path (under any wrapper's own prefix), except SD3.5's
    # query/key RMSNorm scales, which the conversion stores as unnamed constants.
    own = tuple(prefix.replace(".", "_") for prefix in prefixes)
    unnamed = {name: size for name, size in constants.items() if not any(part in name for part in own)}
    assert constants and all(re.fullmatch(r"const_\d+", name) for name in unnamed)
    weights = root / "checkpoints" / f"{checkpoint}.safetensors"
    assert sum(constants.values()) == checkpoint_sizes(weights, prefixes)
    norms = tuple(f"{prefix}{attn}.norm_" for prefix in prefixes for attn in ("attn", "attn2"))
    assert sum(unnamed.values()) == checkpoint_sizes(weights, norms)


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
