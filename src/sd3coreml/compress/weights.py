"""Weight compression of saved packages: int8 or int4 linear quantization, or k-means palettization.

Both run on the fp16 package by a separate step, so changing compression never reconverts.
`gather` ops (token embeddings) stay fp16, as the published resources keep them.
"""

from pathlib import Path

from sd3coreml.compress.settings import NO_EXACT_KMEANS, settings_label
from sd3coreml.convert.package import load_package, save_package
from sd3coreml.errors import PipelineError

KMEANS1D_MIN_WEIGHTS = 10_000


def require_loaded_exact_kmeans() -> None:
    """In the job, by coremltools' own flag: the extension may be present and still fail to load."""
    from coremltools import _deps

    if not _deps._HAS_KMEANS1D:
        raise PipelineError(NO_EXACT_KMEANS)


def linear_config(nbits: int, granularity: str, block_size: int | None):
    import coremltools.optimize.coreml as cto

    if nbits not in (8, 4):
        raise PipelineError(f"linear_symmetric takes 8 or 4 bits, not {nbits}")
    # int4 and blocks need a package converted for iOS18 or newer; config.check_compression says so up front.
    sizes = {"block_size": block_size} if granularity == "per_block" else {}
    return cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype=f"int{nbits}", granularity=granularity, **sizes)


def palette_config(nbits: int, granularity: str, group_size: int | None):
    import coremltools.optimize.coreml as cto

    require_loaded_exact_kmeans()
    # coremltools clusters each palette's weights with its exact k-means when they are >= 10,000
    # fp16 values and with scikit-learn's k-means (seeded: random_state=0) below that. Weights
    # under 10,000 stay fp16; a small group of channels of a larger weight gets the seeded k-means,
    # run on one thread (compress_package) so its sums, and so the palette, repeat exactly.
    sizes = {"group_size": group_size} if granularity == "per_grouped_channel" else {}
    return cto.OpPalettizerConfig(
        mode="kmeans", nbits=nbits, granularity=granularity, weight_threshold=KMEANS1D_MIN_WEIGHTS, **sizes
    )


def optimization_config(mode: str, nbits: int, granularity: str, group_size=None, block_size=None):
    import coremltools.optimize.coreml as cto

    if mode == "linear_symmetric":
        op_config = linear_config(nbits, granularity, block_size)
    elif mode == "palettize":
        op_config = palette_config(nbits, granularity, group_size)
    else:
        raise PipelineError(f"unknown compression mode {mode!r}; use linear_symmetric or palettize")
    return cto.OptimizationConfig(global_config=op_config, op_type_configs={"gather": None})


def compress_package(
    package: Path,
    out: Path,
    mode: str,
    nbits: int = 8,
    granularity: str = "per_channel",
    group_size=None,
    block_size=None,
) -> None:
    import coremltools.optimize.coreml as cto
    from threadpoolctl import threadpool_limits

    config = optimization_config(mode, nbits, granularity, group_size, block_size)
    model = load_package(package)
    if mode == "linear_symmetric":
        compressed = cto.linear_quantize_weights(model, config=config)
    else:
        with threadpool_limits(limits=1):
            compressed = cto.palettize_weights(model, config=config)
    label = settings_label(mode, nbits, granularity, group_size, block_size)
    save_package(compressed, Path(out), {"sd3coreml.compression": label})
