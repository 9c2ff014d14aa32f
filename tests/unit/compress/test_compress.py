"""Compression modes: each one's ops and metadata, and palettes that repeat bit for bit."""

import os
import subprocess
import sys

import pytest

from sd3coreml.checksums import tree_sha256
from sd3coreml.compress.settings import CompressionSetting, checked_setting
from sd3coreml.convert.package import read_spec
from sd3coreml.errors import PipelineError

# 64 outputs x 256 inputs: 16,384 weights, over the 10,000 palettization threshold, while a
# group of 8 channels (2,048 weights) is under coremltools' exact k-means' and gets scikit-learn's.
OUT, IN = 64, 256


@pytest.fixture(scope="module")
def linear_package(tmp_path_factory):
    import coremltools as ct
    import torch

    torch.manual_seed(0)
    module = torch.nn.Linear(IN, OUT).eval()
    example = torch.randn(1, IN)
    traced = torch.jit.trace(module, example)
    model = ct.convert(
        traced,
        inputs=[ct.TensorType(name="x", shape=example.shape)],
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS18,
    )
    path = tmp_path_factory.mktemp("compress") / "linear.fp16.mlpackage"
    model.save(str(path))
    return path


def compress_cli(package, out, *args, threads="1"):
    command = [sys.executable, "-m", "sd3coreml", "compress-package", "--package", str(package), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    subprocess.run([*command, *args], check=True, capture_output=True, env=env)



def program_ops(package):
    function = read_spec(package).mlProgram.functions["main"]
    return {op.type for op in function.block_specializations[function.opset].operations}


def compression_label(package):
    return read_spec(package).description.metadata.userDefined["sd3coreml.compression"]


GROUPED = ["--compression", "palettize4_per_grouped_channel8"]
BLOCKS = ["--compression", "int4_linear_symmetric_per_block32"]


def test_grouped_palettes_repeat_whatever_the_thread_count(linear_package, tmp_path):
    from sd3coreml.compress.weights import compress_package

    one, two = tmp_path / "one.mlpackage", tmp_path / "two.mlpackage"
    compress_cli(linear_package, one, *GROUPED, threads="1")
    # In this process OpenMP has its default, one thread per core.
    compress_package(linear_package, two, CompressionSetting.from_slug("palettize4_per_grouped_channel8"))
    assert tree_sha256(one) == tree_sha256(two)
    assert "constexpr_lut_to_dense" in program_ops(one)
    assert compression_label(one) == "palettize 4-bit per_grouped_channel 8"


def test_palettes_per_tensor_are_the_bytes_of_coremltools_kmeans_mode(linear_package, tmp_path):
    import coremltools.optimize.coreml as cto

    from sd3coreml.compress.weights import optimization_config
    from sd3coreml.convert.package import load_package, save_package

    ours, kmeans = tmp_path / "ours.mlpackage", tmp_path / "kmeans.mlpackage"
    compress_cli(linear_package, ours, "--compression", "palettize6_per_tensor", "--threads", "2")
    config = optimization_config(CompressionSetting.from_slug("palettize6_per_tensor"))
    assert config.global_config.mode == "KMEANS"
    reference = cto.palettize_weights(load_package(linear_package), config=config)
    save_package(reference, kmeans, {"sd3coreml.compression": "palettize 6-bit per_tensor"})
    assert "constexpr_lut_to_dense" in program_ops(ours)
    assert tree_sha256(ours) == tree_sha256(kmeans)


def test_int4_blocks_quantize_with_blockwise_scales(linear_package, tmp_path):
    out = tmp_path / "int4.mlpackage"
    compress_cli(linear_package, out, *BLOCKS)
    assert "constexpr_blockwise_shift_scale" in program_ops(out)
    assert compression_label(out) == "linear_symmetric 4-bit per_block 32"
    weights = "Data/com.apple.CoreML/weights/weight.bin"
    assert (out / weights).stat().st_size < (linear_package / weights).stat().st_size / 3


@pytest.mark.parametrize(
    ("settings", "target", "message"),
    [
        ({"mode": "palettize", "nbits": 4, "granularity": "per_grouped_channel"}, "iOS18", "'k.group_size' must be a positive integer"),
        ({"mode": "palettize", "nbits": 4, "granularity": "per_grouped_channel", "group_size": 8}, "iOS17", "needs conversion_target iOS18"),
        ({"mode": "linear_symmetric", "nbits": 8, "granularity": "per_block", "block_size": 0}, "iOS18", "'k.block_size' must be a positive"),
        ({"mode": "linear_symmetric", "nbits": 8, "granularity": "per_grouped_channel", "group_size": 8}, "iOS18", "'k.granularity' is 'per_grouped_channel'; linear_symmetric takes"),
        ({"mode": "palettize", "nbits": 6, "group_size": 8}, "iOS18", "'k.group_size' needs granularity per_grouped_channel"),
        ({"mode": "linear_symmetric", "nbits": 4, "granularity": "per_channel"}, "iOS17", "needs conversion_target iOS18"),
    ],
)  # fmt: skip
def test_bad_compression_settings_name_their_key(settings, target, message):
    with pytest.raises(PipelineError) as error:
        checked_setting(settings, "k", target)
    assert message in str(error.value)


def test_good_settings_pass():
    assert checked_setting(
        {"mode": "linear_symmetric", "nbits": 8, "granularity": "per_block", "block_size": 32}, "k", "iOS18"
    ) == CompressionSetting("linear_symmetric", 8, "per_block", 32)
    assert checked_setting({"mode": "palettize", "nbits": 6}, "k", "iOS16").slug == "palettize6_per_tensor"


def test_the_parse_time_probe_of_the_exact_kmeans_agrees_with_coremltools_own_flag():
    from coremltools import _deps

    from sd3coreml.compress.settings import exact_kmeans_installed

    assert exact_kmeans_installed() is _deps._HAS_KMEANS1D is True


def test_palettes_refuse_a_weight_holding_nan_by_its_const_and_write_nothing(linear_package, tmp_path):
    import shutil

    import numpy as np

    from sd3coreml.compress.weights import compress_package, weight_consts
    from sd3coreml.convert.package import load_program
    from sd3coreml.convert.package import load_package

    # ct.convert refuses a NaN weight, so one is written into the fp16 package's weight file.
    package, out = tmp_path / "nan.fp16.mlpackage", tmp_path / "out.mlpackage"
    shutil.copytree(linear_package, package)
    weight = max(weight_consts(load_program(load_package(package))).values(), key=lambda value: value.size)
    blob = next(package.rglob("weight.bin"))
    data = blob.read_bytes()
    at = data.index(weight.tobytes())
    blob.write_bytes(data[:at] + np.array([np.nan], dtype=np.float16).tobytes() + data[at + 2 :])
    with pytest.raises(PipelineError, match=r"weight \w+ holds inf or NaN"):
        compress_package(package, out, CompressionSetting.from_slug("palettize6_per_tensor"))
    assert not out.exists()
