"""coremltools' symmetric linear quantization of fp16 weights, bit for bit, its arithmetic in float32.

coremltools 9.0 (`optimize._utils.quantize_weight_by_dtype`) reduces, divides, rounds and clips
fp16 arrays, which numpy runs one value at a time: about 10 s of an SD3 Medium stage's int8 job.
numpy computes an fp16 quotient as the float32 quotient rounded to fp16, so the same values come
from float32 arrays, where numpy uses SIMD: the weight's min and max are exact in either type,
the quotient is rounded to fp16 before `rint` as coremltools rounds it, and the small per-channel
arrays (range, scale) are computed by coremltools' own fp16 expressions. Only fp16 weights,
signed dtypes and `LINEAR_SYMMETRIC` take this route; anything else (NaN, unsigned, `LINEAR`,
another float type) is coremltools' own function. `float32_linear_quantization` installs it for
a `with` block, one of the two places this project replaces coremltools code (docs/TOOL_FACTS.md;
the other is convert/fp16_overflow.py).
"""

from contextlib import contextmanager

import numpy as np

SYMMETRIC = "LINEAR_SYMMETRIC"


def quantize_fp16_symmetric(weight: np.ndarray, axes, q_min: int, q_max: int):
    """(quantized values as float32, fp16 scale squeezed, None): coremltools' result for this case."""
    wide = weight.astype(np.float32)
    val_min = np.amin(wide, axis=axes, keepdims=True).astype(np.float16)
    val_max = np.amax(wide, axis=axes, keepdims=True).astype(np.float16)
    # From here to `scale`, coremltools' expressions on the small fp16 arrays, unchanged.
    max_abs = np.maximum(np.abs(val_min), np.abs(val_max))
    scale = (max_abs - -max_abs) / (q_max - q_min)
    quotient = (wide / scale.astype(np.float32)).astype(np.float16).astype(np.float32)
    quantized = np.clip(np.rint(quotient, out=quotient), q_min, q_max, out=quotient)
    return quantized, scale.astype(np.float16).squeeze(), None


def takes_float32_route(weight: np.ndarray, dtype, mode: str) -> bool:
    from coremltools.converters.mil.mil import types

    return (
        weight.dtype == np.float16
        and mode == SYMMETRIC
        and types.is_int(dtype)
        and not dtype.is_unsigned()
        and not np.isnan(weight).any()
    )


@contextmanager
def float32_linear_quantization():
    """coremltools' linear quantization passes, inside the block, quantize fp16 weights in float32."""
    from coremltools.optimize import _utils as optimize_utils

    original = optimize_utils.quantize_weight_by_dtype

    def quantize_weight_by_dtype(weight, axes, dtype, quantization_mode):
        if not takes_float32_route(weight, dtype, quantization_mode):
            return original(weight, axes, dtype, quantization_mode)
        q_min, q_max = optimize_utils.get_quant_range_by_dtype(dtype, quantization_mode)
        return quantize_fp16_symmetric(weight, axes, q_min, q_max)

    optimize_utils.quantize_weight_by_dtype = quantize_weight_by_dtype
    try:
        yield
    finally:
        optimize_utils.quantize_weight_by_dtype = original
