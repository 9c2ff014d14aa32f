"""Palettes per tensor from a histogram are coremltools' k-means palettes, bit for bit."""

import numpy as np
import pytest

from sd3coreml.compress.palettes import PrecomputedPalettes, coremltools_palette, histogram_palette, kmeans_palette

RNG = np.random.default_rng(0)
FP16_ZERO, FP16_NEGATIVE_ZERO = np.float16(0.0), -np.float16(0.0)


def normal(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float16)


def with_both_zeros(weight: np.ndarray) -> np.ndarray:
    flat = weight.reshape(-1).copy()
    flat[RNG.integers(0, flat.size, flat.size // 20)] = FP16_ZERO
    flat[RNG.integers(0, flat.size, flat.size // 20)] = FP16_NEGATIVE_ZERO
    return flat.reshape(weight.shape)


def few_values(*shape) -> np.ndarray:
    # 33 distinct values: with 6 bits every value, zero too, is a cluster of its own.
    return (np.round(normal(*shape) * 4) / 4).clip(-4, 4).astype(np.float16)


WEIGHTS = {
    "clip-g-attention-size": normal(1280, 1280),
    "heavy-tailed": (RNG.standard_t(2, (320, 160)) * 0.02).astype(np.float16),
    "both-zeros": with_both_zeros(normal(300, 200)),
    "both-zeros-in-their-own-cluster": with_both_zeros(few_values(200, 100)),
    "fewer-values-than-the-palette": few_values(120, 100),
    "4d-convolution": normal(64, 32, 3, 3),
}


def same_bits(ours, theirs):
    (lut, indices), (their_lut, their_indices) = ours, theirs
    assert lut.dtype == their_lut.dtype == np.float16 and indices.dtype == their_indices.dtype == np.uint8
    assert lut.tobytes() == their_lut.tobytes()
    assert indices.shape == their_indices.shape and indices.tobytes() == their_indices.tobytes()


# 6 bits (the text encoders' setting) on every weight; 1, 2, 4 and 8 on two of them.
CASES = [(name, 6) for name in WEIGHTS] + [
    (name, nbits) for name in ("heavy-tailed", "both-zeros") for nbits in (1, 2, 4, 8)
]


@pytest.mark.parametrize("name, nbits", CASES)
def test_the_histogram_palette_is_coremltools_kmeans_palette(name, nbits):
    weight = WEIGHTS[name]
    same_bits(histogram_palette(weight, nbits), coremltools_palette(weight, nbits))


def test_the_zero_cluster_keeps_both_zeros_and_the_sign_coremltools_gives():
    weight = with_both_zeros(few_values(200, 100))
    lut, indices = histogram_palette(weight, 6)
    flat = weight.reshape(-1)
    assert len(set(indices[flat == 0])) == 1  # -0.0 and +0.0 share one palette entry
    same_bits((lut, indices), coremltools_palette(weight, 6))


def test_a_weight_with_a_nan_or_of_another_dtype_takes_coremltools_own_route(monkeypatch):
    nan_weight = normal(200, 100)
    nan_weight[3, 4] = np.float16(np.nan)
    small = normal(50, 50)
    calls = []
    monkeypatch.setattr("sd3coreml.compress.palettes.coremltools_palette", lambda w, n: calls.append(w.shape) or n)
    kmeans_palette(nan_weight, 6)
    kmeans_palette(small, 6)
    kmeans_palette(normal(200, 100), 6)
    assert calls == [(200, 100), (50, 50)]


def test_precomputed_palettes_are_looked_up_by_bytes_and_computed_late_otherwise():
    first, second = normal(200, 100), normal(200, 100)
    palettes = PrecomputedPalettes([first, second], 6, workers=2)
    same_bits(palettes(second.copy()), coremltools_palette(second, 6))
    assert palettes.computed_late == 0
    unseen = normal(100, 200)
    same_bits(palettes(unseen), coremltools_palette(unseen, 6))
    # The same bytes in another shape are another weight.
    palettes(first.reshape(100, 200))
    assert palettes.computed_late == 2
