"""Own evaluations of MIL ops, for `mil_executor`: one short function per op type.

Only for op types of our packages that coremltools cannot evaluate (silu, conv, batch_norm,
gather_nd, upsample_nearest_neighbor), for those whose coremltools evaluation is far too
slow or accumulates in fp16 (the matmul-like ops, gelu, reductions, weight decompression), and
for `quantize`, which must divide in its input's own dtype.
Each computes in fp32; `mil_executor` rounds the result to the dtype the program declares.
Each is tested against PyTorch in tests/unit/verify/test_mil_executor.py.
"""

import numpy as np
import torch
import torch.nn.functional as F
from coremltools.converters.mil.mil import types

_TORCH_FLOATS = {np.dtype(t): getattr(torch, t) for t in ("float16", "float32", "float64")}


def convert_float(value: np.ndarray, dtype) -> np.ndarray:
    """`value` as `dtype`; torch converts floats 3-6x faster than numpy's fp16 casts."""
    if value.dtype == (dtype := np.dtype(dtype)):
        return value
    if value.dtype in _TORCH_FLOATS and dtype in _TORCH_FLOATS and value.flags.c_contiguous:
        converted = np.empty(value.shape, dtype)  # numpy asks for huge pages: fewer page faults
        torch.from_numpy(converted).copy_(torch.from_numpy(value))
        return converted
    return value.astype(dtype)


def _f32(var) -> np.ndarray:
    return convert_float(np.asarray(var.val), np.float32)


def _t32(var) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(_f32(var)))


def _linear(op):
    x = _f32(op.x)
    y = x.reshape(-1, x.shape[-1]) @ _f32(op.weight).T
    if op.bias is not None:
        y += _f32(op.bias)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def _matmul(op):
    x, y = _f32(op.x), _f32(op.y)
    x = np.swapaxes(x, -1, -2) if op.transpose_x.val and x.ndim > 1 else x
    y = np.swapaxes(y, -1, -2) if op.transpose_y.val and y.ndim > 1 else y
    return np.matmul(x, y)


def _scaled_dot_product_attention(op):
    # MIL's contract is torch's: scale 1/sqrt(E), a bool mask marks the keys that take part,
    # a float mask is added to the scores.
    mask = op.attn_mask
    if mask is not None:
        mask = torch.from_numpy(mask.val) if mask.dtype == types.bool else _t32(mask)
    return F.scaled_dot_product_attention(_t32(op.query), _t32(op.key), _t32(op.value), attn_mask=mask).numpy()


def _conv(op):
    x, weight = _t32(op.x), _t32(op.weight)
    pads = _conv_pads(op, x.shape[2:], weight.shape[2:])
    if all(before == after for before, after in pads):
        padding = [before for before, _ in pads]
    else:  # torch pads both sides alike; F.pad lists the last dimension first
        x, padding = F.pad(x, [p for pair in reversed(pads) for p in pair]), 0
    conv = (F.conv1d, F.conv2d, F.conv3d)[x.ndim - 3]
    bias = None if op.bias is None else _t32(op.bias)
    return conv(
        x,
        weight,
        bias,
        stride=op.strides.val.tolist(),
        padding=padding,
        dilation=op.dilations.val.tolist(),
        groups=int(op.groups.val),
    ).numpy()


def _conv_pads(op, sizes, kernel) -> list[tuple[int, int]]:
    """(before, after) padding per spatial dimension for MIL's pad_type."""
    if op.pad_type.val == "custom":
        pad = op.pad.val.tolist()
        return list(zip(pad[0::2], pad[1::2]))
    pads = []  # same*: output size ceil(size / stride), the odd pixel after (same) or before (same_lower)
    for size, k, stride, dilation in zip(sizes, kernel, op.strides.val, op.dilations.val):
        total = max((-(-size // stride) - 1) * stride + (k - 1) * dilation + 1 - size, 0)
        pads.append((total // 2, total - total // 2) if op.pad_type.val != "valid" else (0, 0))
    return [pad[::-1] for pad in pads] if op.pad_type.val == "same_lower" else pads


def _batch_norm(op):
    x = _f32(op.x)
    scale = 1 / np.sqrt(_f32(op.variance) + _f32(op.epsilon))
    scale = scale if op.gamma is None else scale * _f32(op.gamma)
    shift = -_f32(op.mean) * scale + (0 if op.beta is None else _f32(op.beta))
    per_channel = (-1,) + (1,) * (x.ndim - 2)
    y = x * scale.reshape(per_channel)
    y += shift.reshape(per_channel)  # in place: one tensor-sized temporary less
    return y


def _silu(op):
    return F.silu(_t32(op.x)).numpy()


def _gelu(op):
    # coremltools' EXACT gelu calls math.erf from Python once per element: minutes per model.
    x, mode = _t32(op.x), op.mode.val
    if mode == "SIGMOID_APPROXIMATION":
        return (x * torch.sigmoid(1.702 * x)).numpy()
    return F.gelu(x, approximate="tanh" if mode == "TANH_APPROXIMATION" else "none").numpy()


def _reduce(op):
    # coremltools passes keep_dims as numpy.bool_, which numpy 2.3 refuses as `keepdims`;
    # its numpy operator (mean, sum, l2 norm, ...) is used as is.
    axes = None if op.axes is None else tuple(op.axes.val.tolist())
    return op.get_operator()(_f32(op.x), axis=axes, keepdims=bool(op.keep_dims.val))


def _blockwise_shift_scale(op):
    # coremltools repeats `scale` to the full weight shape and multiplies in numpy fp16
    # (seconds per model); broadcasting over blocks in fp32 rounds to the same fp16 weights.
    data, scale = op.data.val, _f32(op.scale)
    blocked = [n for size, blocks in zip(data.shape, scale.shape) for n in (blocks, size // blocks)]
    per_block = [n for blocks in scale.shape for n in (blocks, 1)]
    weight = data.astype(np.float32).reshape(blocked)  # a fresh array, so scaled in place
    if op.offset is not None:
        weight -= _f32(op.offset).reshape(per_block)
    weight *= scale.reshape(per_block)
    return weight.reshape(data.shape)


def _lut_to_dense(op):
    # coremltools copies the whole table once per weight element (gigabytes for a text
    # encoder); look each index up in its group's table instead.
    if "vector_axis" not in op.input_spec.input_types:  # the iOS16 op packs its indices
        return op.materialized_val_inference()
    indices, lut = op.indices.val, op.lut.val
    palettes, vector = lut.shape[-2:]
    rows = indices  # rows of the stacked tables; lut has one group axis per indices axis
    if lut.size > palettes * vector:
        group = np.zeros((1,) * indices.ndim, np.intp)
        for axis, (size, groups) in enumerate(zip(indices.shape, lut.shape)):
            along = np.arange(size) // (size // groups)
            group = group * groups + along.reshape([-1 if a == axis else 1 for a in range(indices.ndim)])
        rows = group * palettes + indices
    dense = np.take(lut.reshape(-1, vector), rows, axis=0)  # indices.shape + (vector,)
    if vector == 1:
        return dense[..., 0]
    axis = int(op.vector_axis.val) % indices.ndim  # an index picks `vector` neighbours along it
    shape = [n * vector if a == axis else n for a, n in enumerate(indices.shape)]
    return np.moveaxis(dense, -1, axis + 1).reshape(shape)


def _quantize(op):
    # An activation's quantize (W8A8) divides by its scale in the input's own dtype, as coremltools
    # defines it: an fp16 quotient such as -2.5006 rounds to -2.5 before rounding half to even, so
    # the fp32 widening every other op gets would move it to another integer.
    return op.value_inference()


def _gather_nd(op):
    x, indices = op.x.val, op.indices.val.astype(np.intp)
    batch_dims, depth = int(op.batch_dims.val), indices.shape[-1]
    bounds = np.array(x.shape[batch_dims : batch_dims + depth])
    if np.any((indices < 0) | (indices >= bounds)):  # undefined on device
        raise IndexError(f"gather_nd indices {indices.tolist()} out of bounds {bounds.tolist()}")
    batch = int(np.prod(x.shape[:batch_dims]))
    picks = np.moveaxis(indices.reshape(batch, -1, depth), -1, 0)
    picked = x.reshape(batch, *x.shape[batch_dims:])[(np.arange(batch)[:, None], *picks)]
    return picked.reshape(*indices.shape[:-1], *x.shape[batch_dims + depth :])


def _upsample_nearest_neighbor(op):
    x = op.x.val
    for axis, factor in ((-2, op.scale_factor_height.val), (-1, op.scale_factor_width.val)):
        size = x.shape[axis]
        source = np.floor(np.arange(int(np.floor(size * factor))) / factor).astype(np.intp)
        x = np.take(x, np.minimum(source, size - 1), axis=axis)
    return x


_REDUCTIONS = ("l1_norm", "l2_norm", "log_sum", "log_sum_exp", "max", "mean", "min", "prod", "sum", "sum_square")
OWN_EVALUATIONS = {
    "linear": _linear,
    "matmul": _matmul,
    "scaled_dot_product_attention": _scaled_dot_product_attention,
    "conv": _conv,
    "batch_norm": _batch_norm,
    "silu": _silu,
    "gelu": _gelu,
    "gather_nd": _gather_nd,
    "upsample_nearest_neighbor": _upsample_nearest_neighbor,
    "constexpr_blockwise_shift_scale": _blockwise_shift_scale,
    "constexpr_lut_to_dense": _lut_to_dense,
    "quantize": _quantize,
    **{f"reduce_{kind}": _reduce for kind in _REDUCTIONS},
}


def _arg_reduce_last_of_ties(op):
    """reduce_argmax/argmin with ties sent to the last index (coremltools' numpy picks the first)."""
    pick = np.argmax if op.op_type == "reduce_argmax" else np.argmin
    axis = int(op.axis.val)
    values = np.flip(np.asarray(op.x.val), axis=axis)
    index = op.x.shape[axis] - 1 - pick(values, axis=axis)
    return np.expand_dims(index, axis) if bool(op.keep_dims.val) else index


LAST_OF_TIES = {"reduce_argmax": _arg_reduce_last_of_ties, "reduce_argmin": _arg_reduce_last_of_ties}
