"""Each MMDiT stage package of the session build holds only its block range's weights (SD3 and SD3.5)."""

import re
from pathlib import Path

import numpy as np
import pytest
from package_contract import read_spec
from safetensors import safe_open


def blob_constants(package: Path) -> dict[str, int]:
    """Weight constants stored in the package's blob file: {name: element count}."""
    block = next(iter(read_spec(package).mlProgram.functions["main"].block_specializations.values()))
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
def test_stage_package_holds_only_its_block_range(demo_build, model, checkpoint, start, end, head):
    root = demo_build / "results" / "demo"
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
