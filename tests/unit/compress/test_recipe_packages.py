"""Packages from recipes: each weight const gets its own setting, found by name and checked; 1- and
2-bit palettes per tensor are coremltools' k-means bytes."""

import json

import numpy as np
import pytest
from harness import REPO, linear_model

from sd3coreml.checksums import tree_sha256
from sd3coreml.compress.settings import CompressionSetting
from sd3coreml.errors import PipelineError
from sd3coreml.inputs.checkpoint import load_transformer_config, sd3_tensor_shapes

WIDTH = 128  # 16,384 values per square weight: over the 10,000 that palettes need
Q0, K0, Q1 = (
    f"transformer_blocks.{block}.attn.{name}.weight" for block, name in ((0, "to_q"), (0, "to_k"), (1, "to_q"))
)
TEXT = "time_text_embed.text_embedder.linear_2.weight"
SMALL = "proj_out.weight"  # 64 x 128: 8,192 values


@pytest.fixture(scope="module")
def mmdit_like(tmp_path_factory):
    """A chain of linears whose consts are named as the MMDiT's: the traced wrapper's `module_`
    prefix on fp16 weights, coremltools' `_to_fp16` suffix on one cast from fp32 (Conditioning's)."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(0)
    square = {name: rng.standard_normal((WIDTH, WIDTH)) for name in (Q0, K0, Q1, TEXT)}

    @mb.program(input_specs=[mb.TensorSpec((1, WIDTH))], opset_version=ct.target.iOS18)
    def chain(x):
        for name, weight in square.items():
            const = f"module_{name.replace('.', '_')}" if name != TEXT else name.replace(".", "_")
            dtype = np.float32 if name == TEXT else np.float16
            x = mb.linear(x=x, weight=mb.const(val=weight.astype(dtype), name=const))
        small = rng.standard_normal((64, WIDTH)).astype(np.float16)
        return mb.linear(x=x, weight=mb.const(val=small, name="module_proj_out_weight"))

    model = ct.convert(chain, minimum_deployment_target=ct.target.iOS18, convert_to="mlprogram",
                       compute_precision=ct.precision.FLOAT16)  # fmt: skip
    path = tmp_path_factory.mktemp("recipes") / "chain.fp16.mlpackage"
    model.save(str(path))
    return path


def recipe_setting(tmp_path, weights: dict, default="fp16", name="r.json") -> CompressionSetting:
    path = tmp_path / name
    path.write_text(json.dumps({"format": "sd3coreml-recipe/1", "weights": weights, "default": default}))
    return CompressionSetting.from_config({"mode": "recipe", "file": str(path)})


def decompressions(package) -> dict[str, tuple]:
    """{weight const: (the op that makes it, palette entries or None)} of a saved package."""
    from sd3coreml.convert.package import load_program
    from sd3coreml.convert.package import load_package

    found = {}
    for op in load_program(load_package(package)).functions["main"].operations:
        if op.op_type == "constexpr_lut_to_dense":
            found[op.name.removesuffix("_palettized")] = (op.op_type, op.lut.val.shape[-2])
        elif op.op_type == "constexpr_blockwise_shift_scale":
            found[op.name.removesuffix("_quantized")] = (op.op_type, None)
        elif op.op_type == "const" and {child.op_type for child in op.outputs[0].child_ops} == {"linear"}:
            value = op.outputs[0].val
            found.update({op.name: ("const", None)} if value.dtype == np.float16 and value.ndim == 2 else {})
    return found


def weight_blob(package) -> bytes:
    return (package / "Data/com.apple.CoreML/weights/weight.bin").read_bytes()



def test_two_bit_palettes_per_tensor_are_the_bytes_of_coremltools_kmeans_mode(tmp_path):
    import coremltools.optimize.coreml as cto

    from sd3coreml.compress.weights import compress_package, optimization_config
    from sd3coreml.convert.package import save_package

    source, ours, kmeans = tmp_path / "in.mlpackage", tmp_path / "ours.mlpackage", tmp_path / "kmeans.mlpackage"
    linear_model(WIDTH).save(str(source))
    setting = CompressionSetting.from_slug("palettize2_per_tensor")
    compress_package(source, ours, setting, workers=2)
    config = optimization_config(setting)
    assert config.global_config.mode == "KMEANS" and config.global_config.nbits == 2
    from sd3coreml.convert.package import load_package

    save_package(
        cto.palettize_weights(load_package(source), config=config), kmeans, {"sd3coreml.compression": setting.label}
    )
    assert {entries for _, entries in decompressions(ours).values()} == {4}
    assert tree_sha256(ours) == tree_sha256(kmeans)


def test_a_recipe_gives_each_named_weight_its_setting_and_the_others_the_default(mmdit_like, tmp_path):
    from sd3coreml.compress.palettes import kmeans_palette
    from sd3coreml.compress.weights import compress_package, weight_consts
    from sd3coreml.convert.package import load_program
    from sd3coreml.convert.package import load_package, read_spec

    weights = {
        Q0: {"nbits": 2, "granularity": "per_tensor"},
        K0: {"mode": "linear_symmetric", "nbits": 8},
        TEXT: {"nbits": 1},
        "transformer_blocks.7.attn.to_q.weight": {"nbits": 1},  # another block range's: ignored here
    }
    setting = recipe_setting(tmp_path, weights, default={"nbits": 6})
    out = tmp_path / f"chain.{setting.slug}.mlpackage"
    compress_package(mmdit_like, out, setting, workers=2)
    assert decompressions(out) == {
        "module_transformer_blocks_0_attn_to_q_weight": ("constexpr_lut_to_dense", 4),
        "module_transformer_blocks_0_attn_to_k_weight": ("constexpr_blockwise_shift_scale", None),
        "module_transformer_blocks_1_attn_to_q_weight": ("constexpr_lut_to_dense", 64),  # the default
        "time_text_embed_text_embedder_linear_2_weight_to_fp16": ("constexpr_lut_to_dense", 2),
        "module_proj_out_weight": ("const", None),  # under the palettes' 10,000 values: fp16, as uniformly
    }
    assert read_spec(out).description.metadata.userDefined["sd3coreml.compression"] == setting.slug
    # Palettes per tensor are the exact k-means ones, computed by compress/palettes.py.
    source = weight_consts(load_program(load_package(mmdit_like)))["module_transformer_blocks_0_attn_to_q_weight"]
    lut = next(op.lut.val for op in load_program(load_package(out)).functions["main"].operations
               if op.name == "module_transformer_blocks_0_attn_to_q_weight_palettized")  # fmt: skip
    assert lut.reshape(-1).tobytes() == kmeans_palette(source, 2)[0].tobytes()


def test_a_recipe_of_only_a_default_makes_the_uniform_packages_weights(mmdit_like, tmp_path):
    from sd3coreml.compress.weights import compress_package

    recipe, uniform = tmp_path / "recipe.mlpackage", tmp_path / "uniform.mlpackage"
    compress_package(mmdit_like, recipe, recipe_setting(tmp_path, {}, default={"nbits": 2}), workers=2)
    compress_package(mmdit_like, uniform, CompressionSetting.from_slug("palettize2_per_tensor"), workers=2)
    assert weight_blob(recipe) == weight_blob(uniform)


def test_the_job_refuses_a_named_weight_its_setting_would_leave_fp16(mmdit_like, tmp_path):
    from sd3coreml.compress.weights import recipe_consts
    from sd3coreml.convert.package import load_program
    from sd3coreml.convert.package import load_package

    program = load_program(load_package(mmdit_like))
    setting = recipe_setting(tmp_path, {SMALL: {"nbits": 2}, Q0: "fp16"}, default={"nbits": 4})
    with pytest.raises(PipelineError) as error:
        recipe_consts(program, setting.recipe_content)
    assert str(error.value) == (
        f"{tmp_path / 'r.json'}: weights.proj_out.weight (const module_proj_out_weight) holds 8,192 values; palettize "
        'compresses only more than 10,000: write "fp16" or drop it'
    )
    named = recipe_consts(
        program, recipe_setting(tmp_path, {SMALL: "fp16", Q0: {"nbits": 2}}, name="ok.json").recipe_content
    )
    assert {const: tensor for const, (tensor, _) in named.items()} == {
        "module_proj_out_weight": SMALL,
        "module_transformer_blocks_0_attn_to_q_weight": Q0,
    }


@pytest.mark.parametrize("config", ["sd3-medium", "sd3.5-medium", "sd3.5-large"])
def test_no_tensor_name_written_as_a_const_ends_another(config):
    # What lets the job match a const by its name's end (compress/weights.py const_pattern).
    table = sd3_tensor_shapes(load_transformer_config(REPO / "config" / "transformers" / f"{config}.json"))
    names = {name.replace(".", "_") for name in table}
    # Every ending of a name after one of its underscores (`attn_to_q_weight` of `transformer_blocks_0_attn_to_q_weight`).
    endings = {name[index + 1 :] for name in names for index, char in enumerate(name) if char == "_"}
    assert len(names) == len(table) > 600 and "attn_to_q_weight" in endings
    assert not names & endings


def test_a_text_encoders_package_holds_every_weight_its_recipe_names(tmp_path):
    """A text encoder's package reads token ids and holds its whole checkpoint: a name matching no
    const there is a mistake, where an MMDiT piece leaves it to another piece."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    from sd3coreml.compress.weights import recipe_consts

    fc1 = np.random.default_rng(0).standard_normal((WIDTH, WIDTH)).astype(np.float16)

    def program(input_name: str):
        @mb.program(input_specs=[mb.TensorSpec((1, WIDTH))], opset_version=ct.target.iOS18)
        def encoder(x):
            weight = mb.const(val=fc1, name="text_model_encoder_layers_0_mlp_fc1_weight_to_fp16")
            return mb.linear(x=x, weight=weight)

        encoder.functions["main"].inputs[input_name] = encoder.functions["main"].inputs.pop("x")
        return encoder

    named = "text_model.encoder.layers.0.mlp.fc1.weight"
    recipe = recipe_setting(tmp_path, {named: {"nbits": 4}, "text_model.encoder.layers.1.mlp.fc1.weight": {"nbits": 2}})
    with pytest.raises(PipelineError) as error:
        recipe_consts(program("input_ids"), recipe.recipe_content)
    assert str(error.value) == (
        f"{tmp_path / 'r.json'}: weights.text_model.encoder.layers.1.mlp.fc1.weight is no weight this text encoder's "
        "package compresses (none of its linear weights' consts); name this encoder's own linear weights, or give "
        "it its own recipe (compression.overrides)"
    )
    assert list(recipe_consts(program("latent_image_embeddings"), recipe.recipe_content).values()) == [
        (named, recipe.recipe_content.setting_for(named))
    ]
