"""Weight compression of saved packages: int8 or int4 linear quantization, k-means palettization,
or a recipe giving each weight its own of those.

All run on the fp16 package by a separate step, so changing compression never reconverts.
`gather` ops (token embeddings) stay fp16, as the published resources keep them.
"""

import re
from pathlib import Path

from sd3coreml.compress.linear_fp32 import float32_linear_quantization
from sd3coreml.compress.palettes import EXACT_KMEANS_MIN_VALUES, PrecomputedPalettes
from sd3coreml.compress.settings import LINEAR, NO_EXACT_KMEANS, PALETTIZE, RECIPE, CompressionSetting
from sd3coreml.contract import INPUT_IDS
from sd3coreml.convert.package import load_package, load_program, save_package
from sd3coreml.errors import PipelineError

# Weights smaller than coremltools' exact k-means threshold stay fp16 (palette_config says why).
KMEANS1D_MIN_WEIGHTS = EXACT_KMEANS_MIN_VALUES


def require_loaded_exact_kmeans() -> None:
    """In the job, by coremltools' own flag: the extension may be present and still fail to load."""
    from coremltools import _deps

    if not _deps._HAS_KMEANS1D:
        raise PipelineError(NO_EXACT_KMEANS)


def linear_config(setting: CompressionSetting):
    import coremltools.optimize.coreml as cto

    # int4 and blocks need a package converted for iOS18 or newer; CompressionSetting.check says so up front.
    sizes = {"block_size": setting.size} if setting.granularity == "per_block" else {}
    return cto.OpLinearQuantizerConfig(
        mode=LINEAR, dtype=f"int{setting.nbits}", granularity=setting.granularity, **sizes
    )


def palette_config(setting: CompressionSetting, lut_function=None):
    import coremltools.optimize.coreml as cto

    require_loaded_exact_kmeans()
    # coremltools clusters each palette's weights with its exact k-means when they are >= 10,000
    # fp16 values and with scikit-learn's k-means (seeded: random_state=0) below that. Weights
    # under 10,000 stay fp16; a small group of channels of a larger weight gets the seeded k-means,
    # run on one thread (compress_package below) so its sums, and so the palette, repeat exactly.
    if lut_function is not None:
        # Per tensor: the same k-means palettes, computed up front (compress/palettes.py).
        return cto.OpPalettizerConfig(
            mode="custom", lut_function=lut_function, granularity=setting.granularity,
            weight_threshold=KMEANS1D_MIN_WEIGHTS,
        )  # fmt: skip
    sizes = {"group_size": setting.size} if setting.granularity == "per_grouped_channel" else {}
    return cto.OpPalettizerConfig(
        mode="kmeans", nbits=setting.nbits, granularity=setting.granularity, weight_threshold=KMEANS1D_MIN_WEIGHTS,
        **sizes,
    )  # fmt: skip


def op_config(setting: CompressionSetting, lut_function=None):
    """coremltools' config for one uniform setting."""
    if setting.mode == LINEAR:
        return linear_config(setting)
    if setting.mode == PALETTIZE:
        return palette_config(setting, lut_function)
    raise PipelineError(f"compression {setting.slug} compresses nothing; compress-package needs a compressed setting")


def optimization_config(setting: CompressionSetting, lut_function=None):
    """coremltools' config for one setting; token embeddings (`gather`) stay fp16."""
    import coremltools.optimize.coreml as cto

    return cto.OptimizationConfig(global_config=op_config(setting, lut_function), op_type_configs={"gather": None})


def weight_consts(program) -> dict:
    """{const name: value} of the fp16 consts read by an op other than `gather`: what a setting may compress."""
    import numpy as np

    weights = {}
    for function in program.functions.values():
        for op in function.find_ops(op_type="const"):
            value = op.outputs[0].val
            readers = {child.op_type for child in op.outputs[0].child_ops}
            if isinstance(value, np.ndarray) and value.dtype == np.float16 and readers - {"gather"}:
                weights[op.name] = value
    return weights


def palettized_weights(program) -> list:
    """The weights the palettizer may take: fp16 consts large enough and read by an op other than `gather`."""
    weights = {name: value for name, value in weight_consts(program).items() if value.size > KMEANS1D_MIN_WEIGHTS}
    refuse_non_finite(weights)
    return list(weights.values())


def refuse_non_finite(weights: dict) -> None:
    """A weight holding inf or NaN has no meaningful palette (k-means breaks on it): refused by its const."""
    import numpy as np

    for name, value in sorted(weights.items()):
        if not np.isfinite(value).all():
            raise PipelineError(
                f"weight {name} holds inf or NaN; palettes of it would be garbage: fix the checkpoint's tensor, "
                "or keep this weight fp16 (a recipe entry \"fp16\")"
            )


def palettize_per_tensor(model, setting: CompressionSetting, workers: int):
    """coremltools' palettizer over one loaded program, its palettes computed first on `workers` threads."""
    import coremltools.optimize.coreml  # noqa: F401  (registers the compression passes)
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY as PASSES
    from coremltools.models.utils import _apply_graph_pass

    program = load_program(model)
    palettes = PrecomputedPalettes(palettized_weights(program), setting.nbits, workers)
    palettizer = PASSES["compression::palettize_weights"]
    config = optimization_config(setting, lut_function=palettes)
    palettizer.set_options([PassOption("config", config), PassOption("joint_compression", False)])
    # coremltools' own hook for a program already loaded: the weights are read once.
    return _apply_graph_pass(model, palettizer, pymil_load_func=lambda *args, **kwargs: program)


# A const is named after its checkpoint tensor: the module path with dots as underscores, after
# the traced wrapper's prefix (`module_transformer_blocks_0_attn_to_q_weight`) or before
# coremltools' cast suffix (`time_text_embed_text_embedder_linear_1_weight_to_fp16`). No SD3
# tensor's name so written ends another's (tests/unit/compress/test_recipe_packages.py), so a
# name matches its own const only; the job refuses a name that matches two.
CAST_SUFFIX = "_to_fp16"
# coremltools' passes a recipe runs, in order: a quantized weight is then left alone by the palettizer.
RECIPE_PASSES = ((LINEAR, "compression::linear_quantize_weights"), (PALETTIZE, "compression::palettize_weights"))


def const_pattern(tensor: str) -> re.Pattern:
    return re.compile(rf"(?:\w+_)?{re.escape(tensor.replace('.', '_'))}(?:{CAST_SUFFIX})?")


def holds_whole_model(program) -> bool:
    """A text encoder's package holds every weight of its checkpoint (it reads token ids); an MMDiT
    piece's holds some of the transformer's."""
    return any(INPUT_IDS in function.inputs for function in program.functions.values())


def recipe_consts(program, recipe) -> dict[str, tuple[str, CompressionSetting]]:
    """{const name: (checkpoint tensor, setting)} for the weights of `program` the recipe names.

    In an MMDiT piece, a name no const matches is a tensor of another package, and is left to it;
    in a text encoder, which holds all its weights, it is refused. Refused in one line too: a name
    matching two consts, a const matched by two names, a named weight too small for its setting
    to compress.
    """
    from sd3coreml.compress.recipes import COMPRESSED_ABOVE

    weights = weight_consts(program)
    whole = holds_whole_model(program)
    named = {}
    for tensor, setting in recipe.weights:
        pattern = const_pattern(tensor)
        matches = sorted(name for name in weights if pattern.fullmatch(name))
        if len(matches) > 1:
            raise PipelineError(f"{recipe.path}: weights.{tensor} matches consts {matches[:2]} of one package")
        if not matches and whole:
            raise PipelineError(
                f"{recipe.path}: weights.{tensor} is no weight this text encoder's package compresses (none of its "
                "linear weights' consts); name this encoder's own linear weights, or give it its own recipe "
                "(compression.overrides)"
            )
        if not matches:
            continue
        const = matches[0]
        if const in named:
            raise PipelineError(f"{recipe.path}: weights.{tensor} and {named[const][0]} both name const {const}")
        threshold = COMPRESSED_ABOVE.get(setting.mode)
        if threshold is not None and weights[const].size <= threshold:
            raise PipelineError(
                f"{recipe.path}: weights.{tensor} (const {const}) holds {weights[const].size:,} values; {setting.mode} "
                f"compresses only more than {threshold:,}: write \"fp16\" or drop it"
            )
        named[const] = (tensor, setting)
    return named


def recipe_passes(program, setting: CompressionSetting, workers: int) -> list:
    """coremltools' passes that apply a recipe to `program`, set up: linear quantization, then palettes.

    Each pass takes configs of its own kind only, so a recipe mixing both runs two, each with the
    default as its global config if the default is of its kind, each named weight's setting, and
    None for every named weight of the other kind or fp16 (a quantized weight feeds a constexpr
    op, which the palettizer leaves alone). Palettes per tensor are computed up front, a set
    per width (compress/palettes.py); per group of channels coremltools computes them.
    """
    import coremltools.optimize.coreml as cto  # registers the compression passes too
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY as PASSES

    recipe = setting.recipe_content
    named = {const: named_setting for const, (_, named_setting) in recipe_consts(program, recipe).items()}
    eligible = {name: value for name, value in weight_consts(program).items() if value.size > KMEANS1D_MIN_WEIGHTS}
    refuse_non_finite({name: value for name, value in eligible.items()
                       if named.get(name, recipe.default).mode == PALETTIZE})  # fmt: skip
    in_use = (recipe.default, *named.values())
    tensor_palettes = [s for s in in_use if s.mode == PALETTIZE and s.granularity == "per_tensor"]
    per_tensor = {given.nbits: [] for given in tensor_palettes}  # nbits -> the weights given those palettes
    for name, value in eligible.items():
        given = named.get(name, recipe.default)
        if given in tensor_palettes:
            per_tensor[given.nbits].append(value)
    palettes = {nbits: PrecomputedPalettes(values, nbits, workers) for nbits, values in sorted(per_tensor.items())}

    def config_of(given: CompressionSetting, mode: str):
        if given.mode != mode:
            return None
        if given in tensor_palettes:
            return op_config(given, palettes[given.nbits])
        return op_config(given)

    passes = []
    for mode, registered in RECIPE_PASSES:
        if all(given.mode != mode for given in in_use):
            continue
        config = cto.OptimizationConfig(
            global_config=config_of(recipe.default, mode),
            op_type_configs={"gather": None},
            op_name_configs={const: config_of(given, mode) for const, given in sorted(named.items())},
        )
        graph_pass = PASSES[registered]
        graph_pass.set_options([PassOption("config", config), PassOption("joint_compression", False)])
        passes.append(graph_pass)
    return passes


def compress_by_recipe(model, setting: CompressionSetting, workers: int):
    """A recipe's passes over one loaded program (read once, as palettize_per_tensor does)."""
    from coremltools.models.utils import _apply_graph_pass
    from threadpoolctl import threadpool_limits

    program = load_program(model)
    passes = recipe_passes(program, setting, workers)
    # Palettes per group of channels may run scikit-learn's k-means: on one thread, so they repeat.
    with threadpool_limits(limits=1):
        return _apply_graph_pass(model, passes, pymil_load_func=lambda *args, **kwargs: program)


def compress_package(
    package: Path, out: Path, setting: CompressionSetting, workers: int = 1, activation_ranges: tuple | None = None
) -> None:
    """Compress a saved fp16 package by `setting` into `out`, the setting's label in its metadata.

    A setting with 8-bit activations takes their ranges and the ops kept fp16 (`({tensor: {"rmin",
    "rmax"}}, {op})`, sensitivity/activation_ranges.py): activations are quantized first and the
    weights after, coremltools' order for joint W8A8 (docs-guides "Quantizing weights and
    activations"). The weight passes keep `joint_compression` False: it is for an already
    compressed weight (a palette's LUT), and the activation scales are scalars no weight pass takes.
    """
    model = load_package(package)
    with float32_linear_quantization():
        compressed = compressed_model(model, setting, workers, activation_ranges)
    save_package(compressed, Path(out), {"sd3coreml.compression": setting.label})


def compressed_model(model, setting: CompressionSetting, workers: int, activation_ranges: tuple | None):
    """The loaded fp16 `model` as `setting` compresses it (compress_package says how)."""
    import coremltools.optimize.coreml as cto
    from threadpoolctl import threadpool_limits

    if setting.activations:
        from sd3coreml.compress.activations import quantize_activations

        if activation_ranges is None:
            raise PipelineError(f"compression {setting.slug} quantizes activations: give their ranges (--activation-ranges)")
        ranges, keep_fp16 = activation_ranges
        model = quantize_activations(model, ranges, keep_fp16)
    elif activation_ranges is not None:
        raise PipelineError(f"--activation-ranges goes with a setting of 8-bit activations (_a8), not {setting.slug}")
    if setting.mode == RECIPE:
        compressed = compress_by_recipe(model, setting, workers)
    elif setting.mode == LINEAR:
        compressed = cto.linear_quantize_weights(model, config=optimization_config(setting))
    elif setting.uses_threads:
        compressed = palettize_per_tensor(model, setting, workers)
    else:
        with threadpool_limits(limits=1):
            compressed = cto.palettize_weights(model, config=optimization_config(setting))
    return compressed
