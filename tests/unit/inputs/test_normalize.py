"""An SD3 transformer in the original layout (joint_blocks.*) is normalised with diffusers' own code."""

import re
from pathlib import Path

import pytest
import torch
from harness import REPO
from safetensors.torch import load_file, save_file
from transformer_files import check_weights_match_config, write_original_layout

from sd3coreml.commands import main as cli
from sd3coreml.errors import PipelineError
from sd3coreml.inputs.checkpoint import load_transformer_config, read_tensor_table
from sd3coreml.inputs.normalize import (
    BASE_MEMORY_MB,
    DIFFUSERS,
    ORIGINAL,
    ORIGINAL_PREFIX,
    check_original_header_matches_config,
    detect_layout,
    normalize_transformer,
    normalized_memory_mb,
)
from sd3coreml.synthetic.checkpoints import write_synthetic_transformer

TINY_CONFIG = REPO / "config" / "transformers" / "sd3-tiny.json"
LAST_BLOCK = load_transformer_config(TINY_CONFIG)["num_layers"] - 1


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The tiny synthetic transformer, and it in the original layout with and without the prefix."""
    folder = tmp_path_factory.mktemp("normalize")
    paths = {"diffusers": folder / "tiny.safetensors"}
    write_synthetic_transformer("tiny", 0, paths["diffusers"], folder / "tiny.json")
    paths["prefixed"] = folder / "tiny-original.safetensors"
    paths["bare"] = folder / "tiny-original-bare.safetensors"
    write_original_layout(paths["diffusers"], paths["prefixed"])
    write_original_layout(paths["diffusers"], paths["bare"], prefix="")
    return paths


def save(tensors: dict, path: Path) -> Path:
    save_file(tensors, str(path))
    return path


def without_block(source: Path, index: int, out: Path) -> Path:
    tensors = load_file(str(source))
    block = f"{ORIGINAL_PREFIX}joint_blocks.{index}."
    return save({name: t for name, t in tensors.items() if not name.startswith(block)}, out)


def test_layouts_are_told_apart(files):
    assert detect_layout(files["diffusers"]) == DIFFUSERS
    assert detect_layout(files["prefixed"]) == ORIGINAL
    assert detect_layout(files["bare"]) == ORIGINAL


@pytest.mark.parametrize(
    "name, what",
    [
        ("down_blocks.0.resnets.0.conv1.weight", "UNet"),
        ("model.diffusion_model.input_blocks.0.0.weight", "UNet"),
        ("double_blocks.0.img_attn.qkv.weight", "Flux"),
    ],
)
def test_other_architectures_are_refused_by_name(tmp_path, name, what):
    path = save({name: torch.zeros(4, 4)}, tmp_path / "other.safetensors")
    with pytest.raises(PipelineError) as error:
        detect_layout(path)
    message = str(error.value)
    assert str(path) in message and what in message and "joint_blocks" in message
    assert "\n" not in message


def test_mixed_layouts_are_refused(tmp_path):
    path = save(
        {
            "transformer_blocks.0.attn.to_q.weight": torch.zeros(2, 2),
            "joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(6, 2),
        },
        tmp_path / "mixed.safetensors",
    )
    with pytest.raises(PipelineError, match="mixes the diffusers"):
        detect_layout(path)


def test_original_layout_has_stability_names(files):
    original, source = load_file(str(files["prefixed"])), load_file(str(files["diffusers"]))
    width = source["context_embedder.weight"].shape[0]
    # The name diffusers itself looks for to recognise an SD3 single file.
    assert "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias" in original
    assert original[f"{ORIGINAL_PREFIX}joint_blocks.0.x_block.attn.qkv.weight"].shape == (3 * width, width)
    last = f"{ORIGINAL_PREFIX}joint_blocks.{LAST_BLOCK}.context_block."
    assert f"{last}attn.qkv.weight" in original
    assert not any(name.startswith((f"{last}attn.proj", f"{last}mlp")) for name in original)
    # Stability's final norm splits its linear as (shift, scale), diffusers' as (scale, shift).
    shift, scale = original[f"{ORIGINAL_PREFIX}final_layer.adaLN_modulation.1.weight"].chunk(2)
    assert torch.equal(torch.cat([scale, shift]), source["norm_out.linear.weight"])


@pytest.mark.parametrize("variant", ["prefixed", "bare"])
def test_round_trip_gives_back_the_source_tensors(files, tmp_path, variant):
    out = tmp_path / "normalized.safetensors"
    normalize_transformer(files[variant], TINY_CONFIG, out)
    source, normalized = load_file(str(files["diffusers"])), load_file(str(out))
    assert sorted(normalized) == sorted(source)
    different = [name for name in source if not torch.equal(source[name], normalized[name])]
    assert different == []
    assert all(normalized[name].dtype == source[name].dtype for name in source)
    check_weights_match_config(out, TINY_CONFIG)


def test_stored_fp16_stays_fp16(files, tmp_path):
    half = save({k: t.half() for k, t in load_file(str(files["prefixed"])).items()}, tmp_path / "half.safetensors")
    normalize_transformer(half, TINY_CONFIG, tmp_path / "normalized.safetensors")
    dtypes = {entry["dtype"] for entry in read_tensor_table(tmp_path / "normalized.safetensors").values()}
    assert dtypes == {"F16"}


def test_single_file_components_are_left_alone(files, tmp_path):
    tensors = load_file(str(files["prefixed"]))
    tensors["first_stage_model.decoder.conv_in.weight"] = torch.zeros(512, 16, 3, 3)
    single = save(tensors, tmp_path / "single.safetensors")
    out = tmp_path / "normalized.safetensors"
    normalize_transformer(single, TINY_CONFIG, out)
    assert "first_stage_model.decoder.conv_in.weight" not in read_tensor_table(out)
    assert normalized_memory_mb(single) == normalized_memory_mb(files["prefixed"])


def test_declared_memory_grows_with_the_transformer(files):
    # The measured peak is 1.27x the transformer's tensors plus the imports (sd3-medium).
    transformer_mb = files["prefixed"].stat().st_size / 2**20 - 1  # less the header
    assert normalized_memory_mb(files["prefixed"]) - BASE_MEMORY_MB >= 1.3 * transformer_mb


# Block 2: diffusers' conversion would raise KeyError; the last block: it would silently
# convert one block fewer.
@pytest.mark.parametrize("index", [2, LAST_BLOCK])
def test_missing_block_is_a_clear_error(files, tmp_path, index):
    truncated = without_block(files["prefixed"], index, tmp_path / "truncated.safetensors")
    out = tmp_path / "normalized.safetensors"
    with pytest.raises(PipelineError) as error:
        normalize_transformer(truncated, TINY_CONFIG, out)
    message = str(error.value)
    assert str(truncated) in message and re.search(r"\(\d+ missing", message) and f"joint_blocks.{index}." in message
    assert not out.exists()
    with pytest.raises(PipelineError, match="joint_blocks numbered"):
        check_original_header_matches_config(truncated, load_transformer_config(TINY_CONFIG), TINY_CONFIG)


def test_parse_time_check_accepts_the_original_file(files):
    config = load_transformer_config(TINY_CONFIG)
    check_original_header_matches_config(files["prefixed"], config, TINY_CONFIG)
    with pytest.raises(PipelineError, match="context_embedder.weight"):
        check_original_header_matches_config(files["bare"], {**config, "joint_attention_dim": 256}, TINY_CONFIG)


def test_diffusers_file_is_not_normalised(files, tmp_path):
    with pytest.raises(PipelineError, match="already in the diffusers layout"):
        normalize_transformer(files["diffusers"], TINY_CONFIG, tmp_path / "normalized.safetensors")


def test_cli_refuses_a_unet_file_in_one_line(tmp_path, capsys):
    unet = save({"down_blocks.0.resnets.0.conv1.weight": torch.zeros(4, 4, 3, 3)}, tmp_path / "unet.safetensors")
    out = tmp_path / "normalized.safetensors"
    argv = ["normalize-transformer", "--weights", str(unet), "--config", str(TINY_CONFIG), "--out", str(out)]
    assert cli.main(argv) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(unet) in lines[0]
    assert not out.exists()
