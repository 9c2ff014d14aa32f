"""program_stats: op count, weight bytes and the live-activation estimate of a saved program."""

import numpy as np
import pytest

from sd3coreml.sweep.program_stats import program_stats

WIDTH = 1024


@pytest.fixture(scope="module")
def residual_package(tmp_path_factory):
    """x -> relu -> +1 -> linear -> +x: x stays alive to the end, beside two other tensors."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, WIDTH))], opset_version=ct.target.iOS18)
    def program(x):
        shifted = mb.add(x=mb.relu(x=x), y=np.float32(1.0))
        projected = mb.linear(x=shifted, weight=np.ones((WIDTH, WIDTH), dtype=np.float32))
        return mb.add(x=projected, y=x)

    model = ct.convert(
        program,
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT32,
        minimum_deployment_target=ct.target.iOS18,
    )
    path = tmp_path_factory.mktemp("stats") / "residual.mlpackage"
    model.save(str(path))
    return path


def test_compute_ops_leave_out_weights(residual_package):
    # relu, add, linear, add; the weight and the scalar are const ops.
    assert program_stats(residual_package).compute_ops == 4


def test_peak_counts_the_tensors_alive_together(residual_package):
    # At the linear op: x (kept for the residual), its input and its output, fp32 each.
    assert program_stats(residual_package).peak_activation_bytes == 3 * WIDTH * 4


def test_weight_bytes_hold_the_weight_file(residual_package):
    stats = program_stats(residual_package)
    assert WIDTH * WIDTH * 4 <= stats.weight_bytes < stats.package_bytes


def test_an_int8_twin_has_the_same_program_and_half_the_weights(residual_package, tmp_path):
    from sd3coreml.compress.settings import CompressionSetting
    from sd3coreml.compress.weights import compress_package

    twin = tmp_path / "residual.int8.mlpackage"
    compress_package(residual_package, twin, CompressionSetting.from_slug("int8_linear_symmetric_per_channel"))
    fp32, int8 = program_stats(residual_package), program_stats(twin)
    assert int8.compute_ops == fp32.compute_ops and int8.peak_activation_bytes == fp32.peak_activation_bytes
    assert int8.weight_bytes < fp32.weight_bytes / 3
