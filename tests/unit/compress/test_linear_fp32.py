"""The float32 route of symmetric linear quantization gives coremltools' own bits."""

import numpy as np
import pytest
from coremltools.converters.mil.mil import types
from coremltools.optimize import _utils as optimize_utils

from sd3coreml.compress.linear_fp32 import float32_linear_quantization, takes_float32_route

SYMMETRIC = "LINEAR_SYMMETRIC"


def heavy_tailed(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weight = rng.standard_t(3, size=shape) * 0.02
    weight.reshape(-1)[:4] = [0.0, -0.0, 1e-7, -3.0]  # zeros of both signs, a subnormal, an outlier
    return weight.astype(np.float16)


def quantized(weight, axes, dtype, mode=SYMMETRIC):
    return optimize_utils.quantize_weight_by_dtype(weight, axes, dtype, mode)


@pytest.mark.parametrize(
    ("dtype", "shape", "axes"),
    [(types.int8, (96, 160), (1,)), (types.int4, (96, 5, 32), (2,)), (types.int8, (8, 16, 3, 3), (1, 2, 3))],
)
def test_the_float32_route_equals_coremltools_bit_for_bit(dtype, shape, axes):
    weight = heavy_tailed(shape)
    data, scale, zero_point = quantized(weight, axes, dtype)
    assert takes_float32_route(weight, dtype, SYMMETRIC)
    with float32_linear_quantization():
        fast = quantized(weight, axes, dtype)
    assert np.array_equal(fast[0].astype(np.int8), data.astype(np.int8))
    assert fast[1].dtype == scale.dtype == np.float16 and fast[1].tobytes() == scale.tobytes()
    assert zero_point is None and fast[2] is None


def test_quotients_are_rounded_to_fp16_before_rint_as_coremltools_rounds_them():
    # Without the fp16 step some quotients land on the other side of a half: 3.4995 is 3 in float32, 3.5 -> 4 in fp16.
    weight = heavy_tailed((256, 256), seed=1)
    data, scale, _ = quantized(weight, (1,), types.int8)
    wide = weight.astype(np.float32)
    naive = np.clip(np.rint(wide / scale.reshape(-1, 1).astype(np.float32)), -128, 127)
    assert not np.array_equal(naive, data.astype(np.float32))
    with float32_linear_quantization():
        assert np.array_equal(quantized(weight, (1,), types.int8)[0], data.astype(np.float32))


def test_other_cases_keep_coremltools_own_function():
    weight = heavy_tailed((16, 32))
    assert not takes_float32_route(weight.astype(np.float32), types.int8, SYMMETRIC)
    assert not takes_float32_route(weight, types.uint8, SYMMETRIC)
    assert not takes_float32_route(weight, types.int8, "LINEAR")
    weight[3, 3] = np.nan
    assert not takes_float32_route(weight, types.int8, SYMMETRIC)
    original = optimize_utils.quantize_weight_by_dtype
    with float32_linear_quantization():
        assert optimize_utils.quantize_weight_by_dtype is not original
    assert optimize_utils.quantize_weight_by_dtype is original
