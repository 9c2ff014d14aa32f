"""The weights file's tensor table is checked against its config before anything loads."""

import errno
import json
import struct
from pathlib import Path

import pytest
import torch
from harness import REPO
from safetensors.torch import save_file
from transformer_files import check_weights_match_config, expected_tensor_shapes

from sd3coreml.errors import PipelineError
from sd3coreml.inputs.checkpoint import (
    check_header_matches_config,
    load_transformer_config,
    read_tensor_table,
    save_safetensors,
    sd3_tensor_shapes,
)
from sd3coreml.synthetic.checkpoints import write_synthetic_transformer

TINY_CONFIG = REPO / "config" / "transformers" / "sd3-tiny.json"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    write_synthetic_transformer("tiny", 0, folder / "t.safetensors", folder / "t.json")
    return folder / "t.safetensors"


def tiny_config() -> dict:
    return {k: v for k, v in json.loads(TINY_CONFIG.read_text()).items() if not k.startswith("_")}


@pytest.mark.parametrize("name", ["sd3-tiny", "sd3-medium", "sd3.5-tiny", "sd3.5-medium", "sd3.5-large"])
def test_written_out_tensor_table_is_diffusers_own(name):
    # The parse-time check compares whole tensor tables without importing torch or diffusers.
    config = load_transformer_config(REPO / "config" / "transformers" / f"{name}.json")
    assert sd3_tensor_shapes(config) == expected_tensor_shapes(config)


def test_matching_weights_pass_both_checks(tiny_weights):
    check_header_matches_config(tiny_weights, tiny_config(), TINY_CONFIG)
    check_weights_match_config(tiny_weights, TINY_CONFIG)


@pytest.mark.parametrize(
    "key, value", [("num_layers", 6), ("joint_attention_dim", 256), ("pooled_projection_dim", 128)]
)
def test_config_disagreeing_with_weights_is_named(tiny_weights, key, value):
    with pytest.raises(PipelineError, match=str(TINY_CONFIG)):
        check_header_matches_config(tiny_weights, {**tiny_config(), key: value}, TINY_CONFIG)


def test_pickle_checkpoint_is_refused(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"\x80\x04")
    with pytest.raises(PipelineError, match="model.ckpt is a pickle checkpoint, refused unread"):
        read_tensor_table(path)


def test_truncated_file_is_named(tiny_weights, tmp_path):
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(tiny_weights.read_bytes()[:-1000])
    with pytest.raises(PipelineError, match="truncated"):
        read_tensor_table(truncated)


def test_corrupt_header_is_named(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 10) + b"not json!!" + b"\0" * 32)
    with pytest.raises(PipelineError, match="corrupt safetensors header"):
        read_tensor_table(path)


def test_other_architecture_is_refused(tmp_path):
    path = tmp_path / "unet.safetensors"
    save_file({"down_blocks.0.resnets.0.conv1.weight": torch.zeros(4, 4, 3, 3)}, str(path))
    with pytest.raises(PipelineError, match="not an SD3-family transformer"):
        check_header_matches_config(path, tiny_config(), TINY_CONFIG)


def test_original_sd3_layout_is_named(tmp_path):
    path = tmp_path / "sd3.safetensors"
    save_file({"joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(6, 2)}, str(path))
    with pytest.raises(PipelineError, match="original SD3 layout"):
        check_header_matches_config(path, tiny_config(), TINY_CONFIG)


def test_a_full_disk_under_the_safetensors_writer_is_an_os_error(tmpfs):
    # safetensors' Rust writer reports it as text; the CLI needs the errno to say "disk full".
    disk = tmpfs(64 * 1024)
    with pytest.raises(OSError) as error:
        save_safetensors({"w": torch.zeros(256, 256)}, disk / "w.safetensors")
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(disk / "w.safetensors")
