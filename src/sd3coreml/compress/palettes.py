"""coremltools' k-means palettes, bit for bit, computed in a fraction of its time and in parallel.

For an fp16 weight of at least 10,000 values coremltools 9 clusters the weight's distinct values,
weighted by their counts, with its vendored exact 1-D k-means
(`quantization_utils._get_kmeans_lookup_table_and_weight`). It finds them with
`np.unique(return_inverse=True, return_counts=True)`, a sort of the whole weight: on a
5120x1280 weight 2.0 s of its 2.8 s. A histogram of the fp16 bit patterns gives the same
values and counts in a few hundredths of a second. Palettes are computed before coremltools'
pass, on threads (the k-means is a ctypes call, which lets other threads run), and the pass
takes them through its custom mode, looking each weight up by its bytes. Any other weight
(another dtype, fewer values, a NaN) gets coremltools' own function, so the result is always
what `mode="kmeans"` makes.
"""

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# coremltools' own rule for its exact k-means (quantization_utils.is_better_to_use_kmeans1d).
EXACT_KMEANS_MIN_VALUES = 10_000
FP16_PATTERNS = 1 << 16
POSITIVE_ZERO, NEGATIVE_ZERO = 0x0000, 0x8000


def fp16_patterns_in_numeric_order() -> np.ndarray:
    """The finite and infinite fp16 bit patterns in ascending value, -0.0 left out (np.unique merges it into +0.0)."""
    patterns = np.arange(FP16_PATTERNS, dtype=np.uint32).astype(np.uint16)
    values = patterns.view(np.float16)
    keep = ~np.isnan(values) & (patterns != NEGATIVE_ZERO)
    kept = patterns[keep]
    return kept[np.argsort(values[keep], kind="stable")]


NUMERIC_ORDER = fp16_patterns_in_numeric_order()
NAN_PATTERNS = np.flatnonzero(np.isnan(np.arange(FP16_PATTERNS, dtype=np.uint32).astype(np.uint16).view(np.float16)))


def coremltools_palette(weight: np.ndarray, nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """coremltools' own k-means palette: (lut in the weight's dtype, uint8 indices in C order)."""
    from coremltools.models.neural_network.quantization_utils import _get_kmeans_lookup_table_and_weight

    lut, indices = _get_kmeans_lookup_table_and_weight(nbits, weight)
    return lut.astype(weight.dtype), indices.astype(np.uint8)


def histogram_palette(weight: np.ndarray, nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """The same palette as coremltools_palette, from a histogram of the weight's fp16 bit patterns."""
    from coremltools._deps import _kmeans1d

    patterns = np.ascontiguousarray(weight).reshape(-1).view(np.uint16)
    counts = np.bincount(patterns, minlength=FP16_PATTERNS)
    if counts[NAN_PATTERNS].any():
        return coremltools_palette(weight, nbits)
    counts[POSITIVE_ZERO] += counts[NEGATIVE_ZERO]
    present = NUMERIC_ORDER[counts[NUMERIC_ORDER] > 0]
    palette_size = 1 << nbits
    clusters = min(len(present), palette_size)
    result = _kmeans1d.cluster(present.view(np.float16).astype(np.float64), clusters, weights=counts[present])
    lut = np.zeros(palette_size)
    lut[:clusters] = result.centroids
    cluster_of_pattern = np.zeros(FP16_PATTERNS, dtype=np.uint8)
    cluster_of_pattern[present] = np.asarray(result.clusters, dtype=np.uint8)
    cluster_of_pattern[NEGATIVE_ZERO] = cluster_of_pattern[POSITIVE_ZERO]
    return lut.astype(np.float16), cluster_of_pattern[patterns]


def kmeans_palette(weight: np.ndarray, nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """What coremltools' kmeans mode makes of one weight, by the fastest route that gives the same bits."""
    if weight.dtype == np.float16 and weight.size >= EXACT_KMEANS_MIN_VALUES:
        return histogram_palette(weight, nbits)
    return coremltools_palette(weight, nbits)


def weight_key(weight: np.ndarray) -> tuple:
    digest = hashlib.blake2b(memoryview(np.ascontiguousarray(weight)).cast("B"), digest_size=16).digest()
    return weight.dtype.str, weight.shape, digest


class PrecomputedPalettes:
    """A `lut_function` for coremltools' custom palettization: palettes computed up front, in parallel.

    A weight not computed up front (the pass may see a weight in another layout) is computed
    when asked, by the same function, so the result never depends on the precomputation.
    """

    def __init__(self, weights: list[np.ndarray], nbits: int, workers: int):
        self.nbits = nbits
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            palettes = list(pool.map(lambda weight: kmeans_palette(weight, nbits), weights))
        self.palettes = {weight_key(weight): palette for weight, palette in zip(weights, palettes)}
        self.computed_late = 0

    def __call__(self, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        palette = self.palettes.pop(weight_key(weight), None)
        if palette is None:
            self.computed_late += 1
            palette = kmeans_palette(weight, self.nbits)
        return palette
