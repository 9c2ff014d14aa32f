"""The vectorized fp16 overflow test answers as coremltools' own, op by op, and a conversion under it is
the same program."""

from contextlib import nullcontext

import numpy as np
import pytest
import torch
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision

from sd3coreml.convert import conversion
from sd3coreml.convert.conversion import TensorSpec, convert_module
from sd3coreml.convert.fp16_overflow import fp16_overflow, vectorized_fp16_overflow

COREMLTOOLS_TEST = FP16ComputePrecision.fp16_overflow
EDGES = {
    "in range": [0.5, -65504.0],
    "just over": [65505.0, 0.0],
    "negative over": [-1e5, 1.0],
    "infinities only": [np.inf, -np.inf],
    "inf beside an overflow": [-np.inf, 7e4],
    "1e38 and above": [1e38, 3e38],
    "just under 1e38": [9.9e37, 0.0],
    "nan only": [np.nan, 1.0],
    "nan beside an overflow": [np.nan, 7e4],
}


def program_ops(values: list[float]):
    """The ops of a program reading `values` as an fp32 tensor const, an fp32 scalar const and in a list."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(2,))])
    def program(x):
        tensor = mb.add(x=x, y=np.array(values, dtype=np.float32))
        scalar = mb.mul(x=tensor, y=np.float32(values[0]))
        return mb.concat(values=[scalar, np.array(values, dtype=np.float32)], axis=0)

    return list(program.functions["main"].operations)


@pytest.mark.parametrize("values", EDGES.values(), ids=EDGES.keys())
def test_each_op_gets_coremltools_answer(values):
    ops = [op for op in program_ops(values) if op.op_type != "const"]
    assert len(ops) == 3
    assert [fp16_overflow(op) for op in ops] == [COREMLTOOLS_TEST(op) for op in ops]


def test_the_edges_overflow_where_they_should():
    # Not a tautology of the test above: the answers themselves, on the add op.
    answers = {name: fp16_overflow(program_ops(values)[1]) for name, values in EDGES.items()}
    overflowing = {"just over", "negative over", "inf beside an overflow", "just under 1e38", "nan beside an overflow"}
    assert {name for name, answer in answers.items() if answer} == overflowing


def test_the_pass_is_coremltools_own_again_after_the_block():
    with vectorized_fp16_overflow():
        assert FP16ComputePrecision.fp16_overflow is fp16_overflow
    assert FP16ComputePrecision.fp16_overflow is COREMLTOOLS_TEST


class Overflowing(torch.nn.Module):
    """A linear whose weight holds a value fp16 cannot: coremltools keeps that op in fp32."""

    def __init__(self):
        super().__init__()
        self.small, self.large = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
        with torch.no_grad():
            self.large.weight[0, 0] = 7e4

    def forward(self, x):
        return self.large(torch.relu(self.small(x)))


def test_a_conversion_under_it_is_the_program_of_coremltools_own(monkeypatch):
    torch.manual_seed(0)
    module, inputs = Overflowing(), [TensorSpec("x", (1, 8))]
    ours = convert_module(module, inputs, ["y"], "iOS18").get_spec()

    monkeypatch.setattr(conversion, "vectorized_fp16_overflow", nullcontext)
    theirs = convert_module(module, inputs, ["y"], "iOS18").get_spec()
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)
    ops = [op.type for op in ours.mlProgram.functions["main"].block_specializations["CoreML8"].operations]
    assert ops.count("cast") >= 2, "the overflowing linear should run in fp32 between casts"
