"""SD3.5 transformers (query/key norms, a second image attention) are read, checked and normalised like SD3 Medium's."""

import json
from pathlib import Path

import pytest
import torch
from harness import REPO
from safetensors.torch import load_file, save_file
from transformer_files import check_weights_match_config, write_original_layout

from sd3coreml.errors import PipelineError
from sd3coreml.inputs.checkpoint import check_architecture, check_header_matches_config, load_transformer_config
from sd3coreml.inputs.normalize import check_original_header_matches_config, normalize_transformer
from sd3coreml.synthetic.checkpoints import transformer_tensor_shapes, write_synthetic_transformer

TRANSFORMERS = REPO / "config" / "transformers"
SD35_TINY, SD3_TINY = TRANSFORMERS / "sd3.5-tiny.json", TRANSFORMERS / "sd3-tiny.json"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sd35")
    paths = {"diffusers": folder / "sd35.safetensors", "original": folder / "sd35-original.safetensors"}
    write_synthetic_transformer("sd3.5-tiny", 0, paths["diffusers"], folder / "sd35.json")
    write_original_layout(paths["diffusers"], paths["original"])
    return paths


@pytest.mark.parametrize("preset", ["sd3.5-medium", "sd3.5-large"])
def test_presets_at_real_size_are_their_pinned_configs(preset):
    # The synthetic checkpoint's tensor table (diffusers, meta device) is what the pinned config implies.
    from transformer_files import expected_tensor_shapes

    pinned = load_transformer_config(TRANSFORMERS / f"{preset}.json")
    assert transformer_tensor_shapes(preset) == expected_tensor_shapes(pinned)


def test_pinned_configs_say_what_sets_sd35_apart():
    medium, large = (load_transformer_config(TRANSFORMERS / f"sd3.5-{size}.json") for size in ("medium", "large"))
    assert medium["dual_attention_layers"] == list(range(13)) and medium["pos_embed_max_size"] == 384
    assert large["num_layers"] == 38 and large["num_attention_heads"] * large["attention_head_dim"] == 2432
    assert medium["qk_norm"] == large["qk_norm"] == "rms_norm" and large["dual_attention_layers"] == []


def test_sd35_weights_pass_both_checks(files):
    check_header_matches_config(files["diffusers"], load_transformer_config(SD35_TINY), SD35_TINY)
    check_weights_match_config(files["diffusers"], SD35_TINY)


def test_sd35_weights_under_an_sd3_config_name_the_sd35_configs(files):
    with pytest.raises(
        PipelineError,
        match=r"a second attention .*SD3\.5's; point models\.\*\.config at config/transformers/sd3\.5-medium\.json",
    ):
        check_header_matches_config(files["diffusers"], load_transformer_config(SD3_TINY), SD3_TINY)
    with pytest.raises(PipelineError, match=r"a second attention .*joint_blocks\.0\.x_block\.attn2\."):
        check_original_header_matches_config(files["original"], load_transformer_config(SD3_TINY), SD3_TINY)


def test_second_attention_alone_is_named(files, tmp_path):
    # qk_norm set, but the config lists no dual-attention block: the attn2 tensors are named.
    config = {**load_transformer_config(SD35_TINY), "dual_attention_layers": []}
    with pytest.raises(
        PipelineError, match=r"a second attention \(dual_attention_layers\), e\.g\. transformer_blocks\.0\.attn2"
    ):
        check_header_matches_config(files["diffusers"], config, SD35_TINY)


def test_original_layout_round_trips_through_diffusers_conversion(files, tmp_path):
    original = load_file(str(files["original"]))
    assert "model.diffusion_model.joint_blocks.0.x_block.attn2.qkv.weight" in original
    assert "model.diffusion_model.joint_blocks.4.context_block.attn.ln_k.weight" in original
    assert not any(".attn2." in name for name in original if ".joint_blocks.2." in name)
    out = tmp_path / "normalized.safetensors"
    normalize_transformer(files["original"], SD35_TINY, out)
    source, normalized = load_file(str(files["diffusers"])), load_file(str(out))
    assert sorted(normalized) == sorted(source)
    assert [name for name in source if not torch.equal(source[name], normalized[name])] == []


@pytest.mark.parametrize(
    "change, message",
    [
        ({"qk_norm": "layer_norm"}, "qk_norm 'layer_norm' is not supported"),
        ({"dual_attention_layers": [0, 5]}, "dual_attention_layers holds 5, not a block index below num_layers=5"),
        ({"_class_name": "FluxTransformer2DModel"}, "_class_name 'FluxTransformer2DModel' is not supported"),
    ],
)
def test_configs_outside_the_family_are_refused_with_the_supported_list(change, message, tmp_path):
    # Through the readers the plan uses: the file as written, then its settings.
    path = tmp_path / "transformer.json"
    path.write_text(json.dumps({**json.loads(SD35_TINY.read_text()), **change}))
    with pytest.raises(PipelineError) as refused:
        check_architecture(load_transformer_config(path), path)
    assert message in str(refused.value) and str(path) in str(refused.value)
    if "supported:" in str(refused.value):
        assert "SD3.5 Large" in str(refused.value)


def test_a_flux_file_is_refused_with_the_supported_list(tmp_path):
    path = tmp_path / "flux.safetensors"
    save_file({"single_transformer_blocks.0.attn.to_q.weight": torch.zeros(4, 4)}, str(path))
    with pytest.raises(PipelineError, match=r"a Flux transformer .*supported: SD3 Medium .*SD3\.5 Large"):
        normalize_transformer(path, SD35_TINY, tmp_path / "out.safetensors")


def test_query_key_norms_alone_are_named(tmp_path):
    # SD3.5 Large: norms but no second attention, under SD3 Medium's settings.
    path = tmp_path / "large-like.safetensors"
    write_synthetic_transformer("sd3.5-tiny", 0, path, tmp_path / "c.json")
    tensors = {name: t for name, t in load_file(str(path)).items() if ".attn2." not in name}
    save_file(tensors, str(path))
    config = {**load_transformer_config(SD35_TINY), "dual_attention_layers": [], "qk_norm": None}
    with pytest.raises(PipelineError, match=r"query/key norms \(qk_norm\), e\.g\. transformer_blocks\.0\.attn\.norm_"):
        check_header_matches_config(path, config, SD35_TINY)
