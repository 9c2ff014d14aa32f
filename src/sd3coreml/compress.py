"""Weight compression of saved packages: int8 or int4 linear quantization, or k-means palettization.

Both run on the fp16 package by a separate step, so changing compression never reconverts.
`gather` ops (token embeddings) stay fp16, as the published resources keep them.
"""

from pathlib import Path

from sd3coreml.errors import PipelineError
from sd3coreml.package import load_package, save_package

KMEANS1D_MIN_WEIGHTS = 10_000


def require_exact_kmeans() -> None:
    # Without kmeans1d coremltools silently falls back to a randomised k-means.
    try:
        import kmeans1d  # noqa: F401
    except ImportError:
        raise PipelineError(
            "palettization needs the 'kmeans1d' package for exact, deterministic k-means; pip install kmeans1d"
        ) from None


def optimization_config(mode: str, nbits: int, granularity: str):
    import coremltools.optimize.coreml as cto

    if mode == "linear_symmetric":
        if nbits not in (8, 4):
            raise PipelineError(f"linear_symmetric takes 8 or 4 bits, not {nbits}")
        # int4 needs a package converted for iOS18 or newer; config.check_compression says so up front.
        op_config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype=f"int{nbits}", granularity=granularity)
    elif mode == "palettize":
        require_exact_kmeans()
        # coremltools runs the exact kmeans1d only on fp16 weights of >= 10,000 elements and
        # a scikit-learn k-means below that; smaller weights stay fp16 so every palette is exact.
        op_config = cto.OpPalettizerConfig(
            mode="kmeans", nbits=nbits, granularity=granularity, weight_threshold=KMEANS1D_MIN_WEIGHTS
        )
    else:
        raise PipelineError(f"unknown compression mode {mode!r}; use linear_symmetric or palettize")
    return cto.OptimizationConfig(global_config=op_config, op_type_configs={"gather": None})


def compress_package(package: Path, out: Path, mode: str, nbits: int = 8, granularity: str = "per_channel") -> None:
    import coremltools.optimize.coreml as cto

    config = optimization_config(mode, nbits, granularity)
    model = load_package(package)
    if mode == "linear_symmetric":
        compressed = cto.linear_quantize_weights(model, config=config)
    else:
        compressed = cto.palettize_weights(model, config=config)
    save_package(compressed, Path(out), {"sd3coreml.compression": f"{mode} {nbits}-bit {granularity}"})
