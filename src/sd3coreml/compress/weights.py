"""Weight compression of saved packages: int8 or int4 linear quantization, or k-means palettization.

Both run on the fp16 package by a separate step, so changing compression never reconverts.
`gather` ops (token embeddings) stay fp16, as the published resources keep them.
"""

from pathlib import Path

from sd3coreml.compress.palettes import EXACT_KMEANS_MIN_VALUES, PrecomputedPalettes
from sd3coreml.compress.settings import LINEAR, NO_EXACT_KMEANS, PALETTIZE, CompressionSetting
from sd3coreml.convert.package import load_package, save_package
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


def optimization_config(setting: CompressionSetting, lut_function=None):
    """coremltools' config for one setting; token embeddings (`gather`) stay fp16."""
    import coremltools.optimize.coreml as cto

    if setting.mode == LINEAR:
        op_config = linear_config(setting)
    elif setting.mode == PALETTIZE:
        op_config = palette_config(setting, lut_function)
    else:
        raise PipelineError(f"compression {setting.slug} compresses nothing; compress-package needs a compressed setting")
    return cto.OptimizationConfig(global_config=op_config, op_type_configs={"gather": None})


def load_program(model):
    """The package's MIL program, as coremltools' compression passes load it."""
    from coremltools.converters.mil.frontend.milproto.load import load
    from coremltools.models.utils import _SPECIFICATION_VERSION_IOS_16

    spec = model.get_spec()
    version = max(spec.specificationVersion, _SPECIFICATION_VERSION_IOS_16)
    return load(spec, specification_version=version, file_weights_dir=model.weights_dir)


def palettized_weights(program) -> list:
    """The weights the palettizer may take: fp16 consts large enough and read by an op other than `gather`."""
    import numpy as np

    weights = []
    for function in program.functions.values():
        for op in function.find_ops(op_type="const"):
            value = op.outputs[0].val
            readers = {child.op_type for child in op.outputs[0].child_ops}
            if isinstance(value, np.ndarray) and value.dtype == np.float16 and value.size > KMEANS1D_MIN_WEIGHTS:
                if readers - {"gather"}:
                    weights.append(value)
    return weights


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


def compress_package(package: Path, out: Path, setting: CompressionSetting, workers: int = 1) -> None:
    """Compress a saved fp16 package by `setting` into `out`, the setting's label in its metadata."""
    import coremltools.optimize.coreml as cto
    from threadpoolctl import threadpool_limits

    model = load_package(package)
    if setting.mode == LINEAR:
        compressed = cto.linear_quantize_weights(model, config=optimization_config(setting))
    elif setting.uses_threads:
        compressed = palettize_per_tensor(model, setting, workers)
    else:
        with threadpool_limits(limits=1):
            compressed = cto.palettize_weights(model, config=optimization_config(setting))
    save_package(compressed, Path(out), {"sd3coreml.compression": setting.label})
