"""The package executor against torch: tiny models are converted, saved, run op by op and compared."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ct = pytest.importorskip("coremltools")
from coremltools.converters.mil import Builder as mb
from coremltools.optimize import coreml as cto

from sd3coreml.verify.mil_executor import NonFiniteValue, UnsupportedOp, load_program, run_package, run_program

FP16, FP32 = ct.precision.FLOAT16, ct.precision.FLOAT32


def convert_and_save(module, example_inputs, tmp_path, precision=FP16, name="model"):
    """`module` (torch, or a MIL program) as a saved iOS18 .mlpackage; inputs are named x0, x1, ..."""
    if isinstance(module, torch.nn.Module):
        module = torch.jit.trace(module.eval(), tuple(torch.as_tensor(x) for x in example_inputs))
        inputs = [ct.TensorType(name=f"x{i}", shape=np.shape(x)) for i, x in enumerate(example_inputs)]
        outputs = [ct.TensorType(name="y")]
    else:
        inputs = outputs = None
    model = ct.convert(
        module,
        inputs=inputs,
        outputs=outputs,
        convert_to="mlprogram",
        compute_precision=precision,
        minimum_deployment_target=ct.target.iOS18,
    )
    return save(model, tmp_path, name)


def save(model, tmp_path, name="model"):
    path = tmp_path / f"{name}.mlpackage"
    model.save(str(path))
    return path


def op_types(package):
    return {op.op_type for op in load_program(package).functions["main"].operations}


def run_single_output(package, example_inputs, **kwargs):
    (output,) = run_package(package, {f"x{i}": np.asarray(x) for i, x in enumerate(example_inputs)}, **kwargs).values()
    return output


def assert_close(package, module, example_inputs, tolerance=2e-3):
    """Executor output vs torch in fp32: max abs error relative to max |reference|."""
    with torch.no_grad():
        reference = module.eval()(*(torch.as_tensor(x) for x in example_inputs)).numpy()
    output = run_single_output(package, example_inputs)
    assert output.shape == reference.shape
    error = np.abs(output.astype(np.float32) - reference).max() / np.abs(reference).max()
    assert error < tolerance, f"relative error {error:.2e}"
    return output


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


class Lambda(torch.nn.Module):
    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, *args):
        return self.function(*args)


@pytest.mark.parametrize(
    "make, size",
    [
        (lambda: torch.nn.Conv2d(4, 6, 3, padding=1), 8),
        (lambda: torch.nn.Conv2d(4, 6, 1), 5),
        (lambda: torch.nn.Conv2d(4, 6, 3, stride=2), 9),
        (lambda: torch.nn.Conv2d(4, 6, (3, 2), padding=(2, 1), stride=(2, 1), dilation=(2, 1)), 9),
        (lambda: torch.nn.Conv2d(4, 8, 3, padding=1, groups=2, bias=False), 7),
        (lambda: torch.nn.Conv2d(4, 4, 3, padding=1, groups=4), 6),
        (lambda: torch.nn.Conv2d(4, 6, 4, padding="same", dilation=2), 9),
        (lambda: torch.nn.Conv1d(4, 6, 3, padding=2, stride=2), 11),
    ],
)
def test_conv_matches_torch(tmp_path, make, size):
    torch.manual_seed(0)
    conv = make()
    x = randn(1, 4, *(size,) * (conv.weight.ndim - 2))
    package = convert_and_save(conv, [x], tmp_path)
    assert "conv" in op_types(package)
    assert_close(package, conv, [x])


@pytest.mark.parametrize("pad_type, expected", [("same", (1, 2)), ("same_lower", (2, 1))])
def test_conv_same_padding_puts_the_odd_pixel_after_or_before(tmp_path, pad_type, expected):
    weight = randn(3, 2, 4, 4)

    @mb.program(input_specs=[mb.TensorSpec((1, 2, 7, 7))], opset_version=ct.target.iOS18)
    def program(x0):
        return mb.conv(x=x0, weight=weight, pad_type=pad_type, strides=[2, 2])

    x = randn(1, 2, 7, 7, seed=1)
    output = run_single_output(convert_and_save(program, [x], tmp_path, FP32), [x])
    before, after = expected
    reference = F.conv2d(F.pad(torch.from_numpy(x), (before, after, before, after)), torch.from_numpy(weight), stride=2)
    np.testing.assert_allclose(output, reference.numpy(), rtol=1e-5, atol=1e-5)


def test_fp32_program_is_evaluated_in_fp32(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.SiLU())
    x = randn(1, 3, 6, 6)
    package = convert_and_save(module, [x], tmp_path, FP32)
    assert assert_close(package, module, [x], tolerance=1e-5).dtype == np.float32


def test_batch_norm_and_silu_match_torch(tmp_path):
    torch.manual_seed(0)
    norm = torch.nn.BatchNorm2d(5, eps=1e-3)
    norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2), norm.weight.data.uniform_(0.5, 2)
    module = torch.nn.Sequential(norm, torch.nn.SiLU())
    x = randn(1, 5, 4, 4)
    package = convert_and_save(module, [x], tmp_path)
    assert {"batch_norm", "silu"} <= op_types(package)
    assert_close(package, module, [x])


@pytest.mark.parametrize("scale", [2.0, 1.5])
def test_upsample_nearest_neighbor_matches_torch(tmp_path, scale):
    module = torch.nn.Upsample(scale_factor=scale, mode="nearest")
    x = randn(1, 2, 4, 6)
    package = convert_and_save(module, [x], tmp_path)
    assert "upsample_nearest_neighbor" in op_types(package)
    assert_close(package, module, [x], tolerance=1e-3)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(tmp_path, bias):
    torch.manual_seed(0)
    module = torch.nn.Linear(64, 48, bias=bias)
    x = randn(2, 5, 64)
    package = convert_and_save(module, [x], tmp_path)
    assert "linear" in op_types(package)
    assert_close(package, module, [x])


def test_matmul_matches_torch(tmp_path):
    module = Lambda(lambda x, y: torch.matmul(x, y.transpose(-1, -2)))
    x, y = randn(2, 3, 7, 40), randn(2, 3, 9, 40, seed=1)
    package = convert_and_save(module, [x, y], tmp_path)
    assert "matmul" in op_types(package)
    assert_close(package, module, [x, y])


@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_scaled_dot_product_attention_matches_torch(tmp_path, mask):
    q, k, v = randn(1, 2, 6, 16), randn(1, 2, 9, 16, seed=1), randn(1, 2, 9, 8, seed=2)
    keep = torch.from_numpy(randn(6, 9, seed=3) > -0.5)
    masks = {None: None, "bool": keep, "float": torch.where(keep, 0.0, -1e4)}
    module = Lambda(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=masks[mask]))
    package = convert_and_save(module, [q, k, v], tmp_path)
    assert "scaled_dot_product_attention" in op_types(package)
    assert_close(package, module, [q, k, v])


@pytest.mark.parametrize("batch_dims, indices", [(0, [[0, 2], [1, 0]]), (1, [[3], [1]])])
def test_gather_nd_picks_the_indexed_rows(tmp_path, batch_dims, indices):
    x, where = randn(2, 4, 3), np.array(indices, np.float32)

    @mb.program(input_specs=[mb.TensorSpec(x.shape), mb.TensorSpec(where.shape)], opset_version=ct.target.iOS18)
    def program(x0, x1):
        picks = mb.cast(x=mb.cast(x=x1, dtype="int32"), dtype="uint16")
        return mb.gather_nd(x=x0, indices=picks, batch_dims=batch_dims)

    fed = []
    observe = lambda op, values: fed.append(op.indices.val) if op.op_type == "gather_nd" else None
    output = run_single_output(convert_and_save(program, [x, where], tmp_path, FP32), [x, where], observe=observe)
    reference = x[tuple(np.array(indices).T)] if batch_dims == 0 else x[[0, 1], np.array(indices)[:, 0]]
    np.testing.assert_array_equal(output, reference)
    assert fed[0].dtype == np.uint16 and fed[0].tolist() == indices


def test_gelu_modes_match_torch(tmp_path):
    module = Lambda(lambda x: F.gelu(x) + F.gelu(x * 0.5, approximate="tanh"))
    x = randn(3, 50) * 3
    assert_close(convert_and_save(module, [x], tmp_path), module, [x])


def assert_decompressed_like_coremltools(package, op_type, module, x):
    """The weights of `op_type` equal coremltools' own decompression, and the outputs torch's with them."""
    ops = [op for op in load_program(package).functions["main"].operations if op.op_type == op_type]
    expected = {op.name: op.materialized_val_inference() for op in ops}
    seen = {}
    run_package(package, {"x0": x}, observe=lambda op, values: seen.update({op.name: values[0]}))
    assert expected and seen.keys() >= expected.keys()
    for name, weight in expected.items():
        np.testing.assert_array_equal(seen[name], weight)
    (module.weight.data,) = (torch.from_numpy(weight.astype(np.float32)) for weight in expected.values())
    assert_close(package, module, [x])


@pytest.mark.parametrize(
    "config",
    [
        cto.OpLinearQuantizerConfig(mode="linear_symmetric", weight_threshold=100),
        cto.OpLinearQuantizerConfig(mode="linear", granularity="per_block", block_size=16, weight_threshold=100),
        cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=16, weight_threshold=100
        ),
    ],
)
def test_int8_weights_are_dequantized_like_coremltools(tmp_path, config):
    torch.manual_seed(0)
    module = torch.nn.Linear(64, 32)
    x = randn(4, 64)
    model = ct.models.MLModel(str(convert_and_save(module, [x], tmp_path)), skip_model_load=True)
    package = save(cto.linear_quantize_weights(model, cto.OptimizationConfig(global_config=config)), tmp_path, "int8")
    assert_decompressed_like_coremltools(package, "constexpr_blockwise_shift_scale", module, x)


@pytest.mark.parametrize(
    "config",
    [
        cto.OpPalettizerConfig(nbits=6, mode="kmeans", granularity="per_tensor", weight_threshold=100),
        cto.OpPalettizerConfig(
            nbits=4, mode="kmeans", granularity="per_grouped_channel", group_size=8, weight_threshold=100
        ),
        cto.OpPalettizerConfig(nbits=4, mode="kmeans", cluster_dim=2, weight_threshold=100),
    ],
)
def test_palettized_weights_are_dequantized_like_coremltools(tmp_path, config):
    torch.manual_seed(0)
    module = torch.nn.Linear(64, 32)
    x = randn(4, 64)
    model = ct.models.MLModel(str(convert_and_save(module, [x], tmp_path)), skip_model_load=True)
    package = save(cto.palettize_weights(model, cto.OptimizationConfig(global_config=config)), tmp_path, "palettized")
    assert_decompressed_like_coremltools(package, "constexpr_lut_to_dense", module, x)


def only_op(package, op_type):
    (op,) = [op for op in load_program(package).functions["main"].operations if op.op_type == op_type]
    return op


def test_fp16_overflow_raises_naming_the_op(tmp_path):
    x = randn(2, 3)
    package = convert_and_save(Lambda(lambda x: x * 1000.0 + 1.0), [x], tmp_path)
    run_single_output(package, [x])
    x[1, 2] = 100.0
    with pytest.raises(
        NonFiniteValue,
        match=rf"^model.mlpackage: op '{only_op(package, 'mul').name}' \(mul\) "
        "produced a non-finite value$",
    ):
        run_single_output(package, [x])


def test_a_constant_overflowing_fp16_raises_where_it_reaches_the_output(tmp_path):
    @mb.program(input_specs=[mb.TensorSpec((2, 3))], opset_version=ct.target.iOS18)
    def program(x0):
        scaled = mb.mul(
            x=mb.cast(x=x0, dtype="fp16"), y=np.array(np.inf, np.float16), name="scaled"
        )  # inf: a constant fp16 cannot hold
        return mb.sub(x=scaled, y=np.float16(1), name="y")

    x = randn(2, 3)
    package = convert_and_save(program, [x], tmp_path, FP32)
    (constant,) = [var for var in only_op(package, "mul").inputs.values() if var.op.op_type == "const"]
    assert np.isinf(constant.val)
    with pytest.raises(
        NonFiniteValue,
        match=rf"op '{constant.op.name}' \(const\) produced a non-finite value, "
        "which reached output 'y'",
    ):
        run_single_output(package, [x])


def test_a_minus_inf_attention_mask_is_no_overflow(tmp_path):
    mask = torch.triu(torch.full((5, 5), float("-inf")), diagonal=1)
    module = Lambda(lambda x: torch.softmax(x @ x.transpose(-1, -2) + mask, dim=-1))
    x = randn(1, 5, 8)
    assert_close(convert_and_save(module, [x], tmp_path), module, [x])


def test_inputs_are_checked(tmp_path):
    x = randn(2, 3)
    package = convert_and_save(torch.nn.SiLU(), [x], tmp_path)
    with pytest.raises(ValueError, match="missing input 'x0'"):
        run_package(package, {})
    with pytest.raises(ValueError, match="input 'x0' has shape"):
        run_package(package, {"x0": randn(3, 2)})
    with pytest.raises(ValueError, match=r"unknown input\(s\) \['x1'\]"):
        run_package(package, {"x0": x, "x1": x})


def test_an_op_without_evaluation_is_unsupported(tmp_path):
    @mb.program(input_specs=[mb.TensorSpec((1, 2, 4, 4))], opset_version=ct.target.iOS18)
    def program(x0):
        return mb.resize_bilinear(x=x0, target_size_height=6, target_size_width=6)

    x = randn(1, 2, 4, 4)
    with pytest.raises(UnsupportedOp, match="model.mlpackage: op type 'resize_bilinear'"):
        run_single_output(convert_and_save(program, [x], tmp_path), [x])


def test_outputs_come_in_the_declared_dtype_and_values_are_released(tmp_path):
    x = randn(2, 3)
    program = load_program(convert_and_save(Lambda(lambda x: torch.sigmoid(x) * 2), [x], tmp_path))
    main = program.functions["main"]
    (output,) = run_program(program, {"x0": x}).values()
    assert output.dtype == np.float16
    assert all(var.val is None for op in main.operations if op.op_type != "const" for var in op.outputs)
    assert all(op.outputs[0].val is not None for op in main.operations if op.op_type == "const")


@pytest.mark.parametrize("zero_point", [None, 3])
def test_activation_quantize_and_dequantize_are_evaluated_as_coremltools_defines_them(tmp_path, zero_point):
    """What an 8-bit activation (W8A8) pair computes: rounding half to even, saturation at the
    int8 range, per-tensor scale. Held against coremltools' own numpy definitions of the two ops."""
    from coremltools.optimize import _utils as optimize_utils

    scale = np.float16(0.05)
    # Halfway points (x.5 after the division), values past the range on both sides, zeros.
    x = np.array([[0.025, 0.075, -0.125, 0.0, 9.0, -9.0, 6.35, -6.4, 1.2345, 0.124]], dtype=np.float16)
    offset = None if zero_point is None else np.int8(zero_point)

    @mb.program(input_specs=[mb.TensorSpec(x.shape, dtype=ct.converters.mil.mil.types.fp16)],
                opset_version=ct.target.iOS17)  # fmt: skip
    def program(x0):
        quantized = mb.quantize(input=x0, scale=scale, zero_point=offset, output_dtype="int8")
        return mb.dequantize(input=quantized, scale=scale, zero_point=offset)

    package = convert_and_save(program, [x], tmp_path)
    assert {"quantize", "dequantize"} <= op_types(package)
    output = run_single_output(package, [x])
    quantized = optimize_utils.quantize_by_scale_and_zp(x, scale, offset, "int8")
    expected = optimize_utils.dequantize_by_scale_and_zp(quantized, scale, offset)
    assert output.dtype == np.float16 and np.array_equal(output, expected)
    assert quantized.min() == -128 and quantized.max() == 127  # saturated, not wrapped
