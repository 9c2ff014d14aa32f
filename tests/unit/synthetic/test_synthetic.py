"""Synthetic SD3 checkpoints load into the real diffusers/transformers classes and are deterministic."""

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import REPO

from sd3coreml.errors import PipelineError
from sd3coreml.synthetic.checkpoints import (
    OUTLIER_GAIN,
    synthetic_tensor,
    transformer_tensor_shapes,
    write_synthetic_components,
    write_synthetic_transformer,
)
from sd3coreml.synthetic.clip_vocabulary import bytes_to_unicode, clip_merges
from sd3coreml.synthetic.presets import PRESETS, get_preset, relation_problems

SRC = REPO / "src"


def _write_tiny_transformer(directory: Path, seed: int) -> tuple[Path, Path]:
    weights, config = directory / "transformer.safetensors", directory / "transformer.json"
    write_synthetic_transformer("tiny", seed, weights, config)
    return weights, config


@pytest.fixture(scope="module")
def tiny_transformer(tmp_path_factory):
    return _write_tiny_transformer(tmp_path_factory.mktemp("transformer"), seed=0)


@pytest.fixture(scope="module")
def tiny_components(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("components") / "components"
    write_synthetic_components("tiny", 0, out_dir)
    return out_dir


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_tiny_transformer_loads_strictly_and_runs_finite(tiny_transformer):
    from diffusers import SD3Transformer2DModel
    from safetensors.torch import load_file

    weights, config = tiny_transformer
    model = SD3Transformer2DModel.from_config(json.loads(config.read_text()))
    model.load_state_dict(load_file(weights), strict=True)
    assert not (weights.parent / "config.json").exists()
    with torch.no_grad():
        output = model(
            hidden_states=torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(1)),
            encoder_hidden_states=torch.randn(1, 154, 192, generator=torch.Generator().manual_seed(2)),
            pooled_projections=torch.randn(1, 160, generator=torch.Generator().manual_seed(3)),
            timestep=torch.tensor([750.0]),
        ).sample
    assert output.shape == (1, 16, 16, 16)
    assert torch.isfinite(output).all()
    assert 0.01 < output.std().item() < 100


def test_tiny_transformer_keeps_diffusers_sincos_table_and_last_block_is_context_pre_only(tiny_transformer):
    from diffusers.models.embeddings import get_2d_sincos_pos_embed
    from safetensors.torch import load_file

    tensors = load_file(tiny_transformer[0])
    expected = get_2d_sincos_pos_embed(64, 16, base_size=8, interpolation_scale=1, output_type="pt")
    torch.testing.assert_close(tensors["pos_embed.pos_embed"], expected.float().unsqueeze(0))
    assert "transformer_blocks.3.ff_context.net.2.weight" in tensors
    assert "transformer_blocks.4.ff_context.net.2.weight" not in tensors


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path, tiny_transformer):
    weights, config = _write_tiny_transformer(tmp_path / "again", seed=0)
    other_weights, _ = _write_tiny_transformer(tmp_path / "other", seed=1)
    assert weights.read_bytes() == tiny_transformer[0].read_bytes()
    assert config.read_bytes() == tiny_transformer[1].read_bytes()
    assert other_weights.read_bytes() != weights.read_bytes()


def test_components_are_byte_identical_with_one_thread(tmp_path, tiny_components):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        write_synthetic_components("tiny", 0, tmp_path / "components")
    finally:
        torch.set_num_threads(threads)
    assert _folder_bytes(tmp_path / "components") == _folder_bytes(tiny_components)
    assert not list(tmp_path.glob("*.tmp-*"))


def test_tensor_values_do_not_depend_on_process_hash_seed_or_order():
    names = ["transformer_blocks.0.attn.to_q.weight", "norm_out.linear.bias", "text_model.final_layer_norm.weight"]
    shapes = [(64, 64), (128,), (96,)]

    def digests(order):
        return {
            name: hashlib.sha256(synthetic_tensor(7, "part", name, shape, torch.float16).numpy().tobytes()).hexdigest()
            for name, shape in order
        }

    # Only numpy and torch are imported there, to keep it fast; Python's hash() is salted per process.
    script = (
        "import json, sys; from sd3coreml.synthetic.checkpoints import synthetic_tensor; import hashlib, torch\n"
        "order = json.loads(sys.argv[1])\n"
        "print(json.dumps({n: hashlib.sha256(synthetic_tensor(7, 'part', n, tuple(s), torch.float16)"
        ".numpy().tobytes()).hexdigest() for n, s in order}))"
    )
    reversed_order = list(zip(names, shapes))[::-1]
    environment = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", script, json.dumps(reversed_order)]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, check=True)
    in_process = digests(zip(names, shapes))
    assert json.loads(completed.stdout) == in_process
    assert len(set(in_process.values())) == 3


def test_components_load_with_transformers_and_diffusers(tiny_components):
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModelWithProjection

    spec = get_preset("tiny")
    input_ids = torch.tensor([[49406, 320, 1125, 539, 49407] + [49407] * 72])
    for folder, clip in (("text_encoder", spec.clip_l), ("text_encoder_2", spec.clip_g)):
        encoder = CLIPTextModelWithProjection.from_pretrained(tiny_components / folder).float().eval()
        assert encoder.config.hidden_act == clip.hidden_act
        with torch.no_grad():
            output = encoder(input_ids, output_hidden_states=True)
        assert output.hidden_states[-2].shape == (1, 77, clip.hidden_size)
        assert output.text_embeds.shape == (1, clip.projection_dim)
        assert torch.isfinite(output.hidden_states[-2]).all() and torch.isfinite(output.text_embeds).all()

    vae = AutoencoderKL.from_pretrained(tiny_components / "vae").eval()
    assert (vae.config.scaling_factor, vae.config.shift_factor) == (1.5305, 0.0609)
    with torch.no_grad():
        image = vae.decode(torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(4))).sample
    assert image.shape == (1, 3, 128, 128)
    assert torch.isfinite(image).all()


def test_tokenizers_hold_clips_real_vocabulary_and_sd3s_pad_tokens(tiny_components):
    from transformers import CLIPTokenizer

    for folder, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        tokenizer = CLIPTokenizer.from_pretrained(tiny_components / folder)
        assert len(tokenizer) == 49408 and tokenizer.pad_token == pad and tokenizer.model_max_length == 77
        # OpenAI's CLIP ids, from the BPE file of the open_clip_torch wheel.
        assert tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    vocab = json.loads((tiny_components / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    characters = bytes_to_unicode()
    assert [vocab[character] for character in characters] == list(range(256))
    assert vocab[characters[0] + "</w>"] == 256
    assert (vocab["<|startoftext|>"], vocab["<|endoftext|>"], vocab["!"]) == (49406, 49407, 0)
    merges = (tiny_components / "tokenizer" / "merges.txt").read_bytes()
    assert merges.startswith(b"#version: 0.2\n") and merges.endswith(b"\n") and merges.count(b"\n") == 1 + 48894
    # Six real merges start with "#", which the app's Swift reader skips.
    assert sum(1 for first, _ in clip_merges() if first.startswith("#")) == 6
    for name in ("vocab.json", "merges.txt"):
        assert (tiny_components / "tokenizer_2" / name).read_bytes() == (
            tiny_components / "tokenizer" / name
        ).read_bytes()


def test_tiny_keeps_sd3_width_relations():
    spec = get_preset("tiny")
    transformer = spec.transformer
    assert transformer.pooled_projection_dim == spec.clip_l.projection_dim + spec.clip_g.projection_dim
    assert transformer.joint_attention_dim >= spec.clip_l.hidden_size + spec.clip_g.hidden_size
    assert transformer.caption_projection_dim == transformer.num_attention_heads * transformer.attention_head_dim
    assert relation_problems(spec) == []


def test_preset_breaking_a_relation_is_refused():
    import dataclasses

    spec = PRESETS["tiny"]
    with pytest.raises(ValueError, match="pooled_projection_dim"):
        dataclasses.replace(spec, transformer=dataclasses.replace(spec.transformer, pooled_projection_dim=128))


def test_sd3_medium_shape_table_matches_the_real_model():
    shapes = transformer_tensor_shapes("sd3-medium")
    blocks = {name.split(".")[1] for name in shapes if name.startswith("transformer_blocks.")}
    parameters = sum(torch.Size(shape).numel() for name, shape in shapes.items() if name != "pos_embed.pos_embed")
    print(f"sd3-medium synthetic transformer: {parameters:,} parameters")
    assert len(blocks) == 24
    assert shapes["pos_embed.proj.weight"] == (1536, 16, 2, 2)
    assert shapes["context_embedder.weight"] == (1536, 4096)
    assert shapes["time_text_embed.text_embedder.linear_1.weight"] == (1536, 2048)
    assert shapes["pos_embed.pos_embed"] == (1, 192 * 192, 1536)
    assert parameters == pytest.approx(2.03e9, rel=0.005)
    assert get_preset("sd3-medium").dtype == "float16"


def test_unknown_preset_is_one_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="unknown synthetic preset 'huge'"):
        write_synthetic_components("huge", 0, tmp_path / "out")
    assert not list(tmp_path.iterdir())


def test_cli_writes_transformer_and_replaces_existing_components(tmp_path):
    from sd3coreml.commands.main import main

    weights, config = tmp_path / "t.safetensors", tmp_path / "t.json"
    arguments = ["--preset", "tiny", "--seed", "3", "--weights", str(weights), "--config", str(config)]
    assert main(["synthetic-transformer", *arguments]) == 0
    assert json.loads(config.read_text())["_class_name"] == "SD3Transformer2DModel"
    assert weights.stat().st_mode & 0o777 == 0o644
    out_dir = tmp_path / "components"
    (out_dir / "stale").mkdir(parents=True)
    assert main(["synthetic-components", "--preset", "tiny", "--seed", "3", "--out", str(out_dir)]) == 0
    assert sorted(path.name for path in out_dir.iterdir()) == [
        "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae"
    ]  # fmt: skip
    assert sorted(path.name for path in tmp_path.iterdir()) == ["components", "t.json", "t.safetensors"]
    assert main(["synthetic-components", "--preset", "nope", "--seed", "3", "--out", str(out_dir)]) == 1


def test_heavy_tailed_matrices_have_outlier_channels_and_keep_their_gain():
    shape = (256, 1024)
    heavy = synthetic_tensor(0, "transformer", "w.weight", shape, torch.float32, "heavy-tailed").numpy()
    plain = synthetic_tensor(0, "transformer", "w.weight", shape, torch.float32).numpy()
    column_rms = np.sqrt(np.mean(heavy**2, axis=0))
    # A few input channels tens of times larger than the median one; none in plain weights.
    assert np.sum(column_rms > OUTLIER_GAIN / 2 * np.median(column_rms)) >= 4
    assert np.max(np.sqrt(np.mean(plain**2, axis=0))) < 2 * np.median(np.sqrt(np.mean(plain**2, axis=0)))
    # Log-normal row scales, and the same average gain as plain weights (activations stay fp16-sized).
    row_rms = np.sqrt(np.mean(heavy**2, axis=1)) * np.sqrt(shape[1])
    assert np.std(np.log(row_rms)) == pytest.approx(0.5, abs=0.1)
    assert np.median(row_rms) == pytest.approx(1.0, abs=0.15)
    # Heavier tails than a normal matrix: the max entry sits far out in its int8 range.
    assert np.max(np.abs(heavy)) / np.std(heavy) > 3 * np.max(np.abs(plain)) / np.std(plain)


def test_heavy_tailed_weights_are_deterministic_and_leave_biases_and_norms_alone():
    first = synthetic_tensor(3, "transformer", "a.weight", (64, 128), torch.float16, "heavy-tailed")
    again = synthetic_tensor(3, "transformer", "a.weight", (64, 128), torch.float16, "heavy-tailed")
    assert torch.equal(first, again)
    for name, shape in (("a.bias", (64,)), ("norm.weight", (64,))):
        assert torch.equal(
            synthetic_tensor(3, "t", name, shape, torch.float32, "heavy-tailed"),
            synthetic_tensor(3, "t", name, shape, torch.float32),
        )


def test_declared_memory_covers_the_tensors_and_fits_the_default_profile():
    import yaml
    from harness import REPO

    from sd3coreml.inputs.checkpoint import sd3_tensor_shapes
    from sd3coreml.synthetic.checkpoints import transformer_memory_mb

    profile = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    budget = int(profile["resources"][0].split("=")[1])
    for preset in ("tiny", "sd3-medium", "sd3.5-medium", "sd3.5-large"):
        shapes = sd3_tensor_shapes(get_preset(preset).transformer.diffusers_config())
        tensor_mb = sum(math.prod(shape) for shape in shapes.values()) * 2 / 2**20
        assert tensor_mb < transformer_memory_mb(preset) < budget
