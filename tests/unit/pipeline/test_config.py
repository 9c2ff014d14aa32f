"""Config checks at parse time: each bad value fails with one line naming the key.

The schema's refusals are worded by `config.schema_problem`, tested in-process; through Snakemake,
tests/workflow/test_refusals.py shows one schema refusal and one semantic check reaching the user
the same way. Every other semantic check is tested in-process in tests/unit/pipeline/test_bad_input.py.
"""

import functools

import pytest
import yaml
from harness import REPO, linear_model
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from sd3coreml.compress.settings import COMPRESSION_MINIMUM_TARGET, CONVERSION_TARGETS, GRANULARITY_MINIMUM_TARGET
from sd3coreml.compress.weights import optimization_config
from sd3coreml.compress.settings import CompressionSetting
from sd3coreml.pipeline.config import schema_problem

SCHEMA = REPO / "config" / "schema.yaml"


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"batch_size": 2}, "config key 'batch_size': 2 is not one of [1]; see config/schema.yaml"),
        ({"compression": {"mmdit": {"mode": "int3"}}}, "config key 'compression.mmdit.mode': 'int3' is not one of"),
        ({"stage_sizes": "4,4"}, "config key 'stage_sizes': '4,4' is not of type 'array'"),
    ],
)
def test_schema_refusals_name_the_key(changes, expected):
    config = {**yaml.safe_load((REPO / "config" / "demo.yaml").read_text()), **changes}
    with pytest.raises(WorkflowError):
        validate(config, str(SCHEMA))
    assert schema_problem(config, SCHEMA).startswith(expected)


@functools.cache
def linear_package(version: int):
    """A one-linear ML program converted for iOS<version>, its weight big enough to be compressed."""
    return linear_model(128, version)


def compression_ops(mode: str, nbits: int, version: int, granularity=None, **sizes) -> set[str]:
    """The constexpr ops compress.py's settings leave in the package; raises coremltools' refusal."""
    import coremltools.optimize.coreml as cto

    granularity = granularity or ("per_tensor" if mode == "palettize" else "per_channel")
    size = sizes.get("block_size", sizes.get("group_size"))
    config = optimization_config(CompressionSetting(mode, nbits, granularity, size))
    compress = cto.linear_quantize_weights if mode == "linear_symmetric" else cto.palettize_weights
    model = compress(linear_package(version), config=config)
    return {op.op_type for op in model._mil_program.functions["main"].operations if op.op_type.startswith("constexpr")}


def refused_below(target: str):
    """coremltools' own refusal of a compression one conversion target too old, e.g.
    "The 4-bit quantization is supported since iOS18. Please re-convert your model ..."."""
    return pytest.raises(ValueError, match=rf"is supported since {target}\. Please re-convert")


@pytest.mark.parametrize(
    "mode, granularity, sizes",
    [("linear_symmetric", "per_block", {"block_size": 32}), ("palettize", "per_grouped_channel", {"group_size": 16})],
)
def test_granularity_table_is_what_coremltools_runs(mode, granularity, sizes):
    """Blocks and channel groups compress at their minimum conversion target, and not one below."""
    minimum = GRANULARITY_MINIMUM_TARGET[granularity]
    oldest = CONVERSION_TARGETS[minimum]
    assert compression_ops(mode, 8, oldest, granularity, **sizes)
    with refused_below(minimum):
        compression_ops(mode, 8, oldest - 1, granularity, **sizes)


@pytest.mark.parametrize("mode, nbits", list(COMPRESSION_MINIMUM_TARGET))
def test_compression_table_is_what_coremltools_runs(mode, nbits):
    """Each compression compresses at its minimum conversion target, and not one below (where supported)."""
    minimum = COMPRESSION_MINIMUM_TARGET[mode, nbits]
    oldest = CONVERSION_TARGETS[minimum]
    assert compression_ops(mode, nbits, oldest)
    if oldest > min(CONVERSION_TARGETS.values()):
        with refused_below(minimum):
            compression_ops(mode, nbits, oldest - 1)
