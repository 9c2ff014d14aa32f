"""coremltools' fp16 overflow test of fp32 constants, the same answer without its index arrays.

coremltools 9.0's FP16ComputePrecision pass (`mil/passes/defs/quantization.py`) asks of each op
whether an fp32 constant input holds a finite value that fp16 cannot hold, as
`np.max(abs_value[np.where(abs_value < 1e38)], initial=0.0) > 65504`: `np.where` builds an int64
index array per dimension of every weight before the values are gathered and reduced. On CLIP-G
(695 M fp32 weights) that is about 15 s of a 48-s conversion. The question is whether some |value|
lies in (65504, 1e38), which two comparisons answer in one pass: a NaN fails both in either
form, as an infinity or |value| >= 1e38 fails the second. `vectorized_fp16_overflow` installs
this test on the pass for a `with` block (docs/TOOL_FACTS.md); the pass itself, its op selector
and everything it casts are coremltools' own.
"""

from contextlib import contextmanager

import numpy as np

FP16_MAX, TREATED_AS_INFINITE = 65504, 1e38


def holds_fp16_overflow(value) -> bool:
    """Whether an fp32 array (or scalar) holds a value with FP16_MAX < |value| < TREATED_AS_INFINITE."""
    magnitude = np.abs(np.asarray(value))
    return bool(np.any((magnitude > FP16_MAX) & (magnitude < TREATED_AS_INFINITE)))


def fp16_overflow(op) -> bool:
    """FP16ComputePrecision.fp16_overflow's answer for `op`: an fp32 const input would overflow fp16."""
    return any(
        var.op is not None
        and var.op.op_type == "const"
        and var.is_tensor_or_scalar_of(dtype="fp32")
        and holds_fp16_overflow(var.op.val.val)
        for inputs in op.inputs.values()
        for var in (inputs if isinstance(inputs, (list, tuple)) else [inputs])
    )


@contextmanager
def vectorized_fp16_overflow():
    """Inside the block, coremltools' FP16ComputePrecision pass tests constants with fp16_overflow."""
    from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision

    original = FP16ComputePrecision.__dict__["fp16_overflow"]
    FP16ComputePrecision.fp16_overflow = staticmethod(fp16_overflow)
    try:
        yield
    finally:
        FP16ComputePrecision.fp16_overflow = original
