"""The app's noise for a seed: NumPyRandomSource (ml-stable-diffusion at MobileDiffuser bfe2f28).

References from outside the module: the Swift package's own test, the C++ standard's check value
for the Mersenne Twister, and NumPy's legacy generator, which NumPyRandomSource.swift says it
matches ("This implementation matches: NumPy's older randomkit.c").
"""

import numpy as np
import pytest

from sd3coreml.errors import PipelineError
from sd3coreml.verify.end_to_end.app_chain import initial_latent
from sd3coreml.verify.end_to_end.app_noise import NumPyRandomSource


def test_the_swift_packages_own_test_values():
    # ml-stable-diffusion/swift/StableDiffusionTests/StableDiffusionTests.swift at bfe2f28,
    # test_randomNormalValues_matchNumPyRandom:
    #     var random = NumPyRandomSource(seed: 12345)
    #     let samples = random.normalArray(count: 10_000)
    #     let last5 = samples.suffix(5)
    #     // numpy.random.seed(12345); print(numpy.random.randn(10000)[-5:])
    #     let expected = [-0.86285345, 2.15229409, -0.00670556, -1.21472309, 0.65498866]
    #     XCTAssertEqual(value, expected, accuracy: .ulpOfOne.squareRoot())
    expected = [-0.86285345, 2.15229409, -0.00670556, -1.21472309, 0.65498866]
    samples = NumPyRandomSource(12345).normals(10_000)
    np.testing.assert_allclose(samples[-5:], expected, rtol=0, atol=np.sqrt(np.finfo(np.float64).eps))


def test_the_mersenne_twister_meets_the_cxx_standards_check_value():
    # ISO C++ [rand.predef]: "The 10000th consecutive invocation of a default-constructed object of
    # type mt19937 shall produce the value 4123659995" (default seed 5489, init_genrand as here).
    assert NumPyRandomSource(5489).uint32s(10_000)[-1] == 4123659995


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**31, 2**32 - 1])
def test_words_and_normals_are_numpys_legacy_generator_bit_for_bit(seed):
    legacy = np.random.RandomState(seed)
    source = NumPyRandomSource(seed)
    np.testing.assert_array_equal(source.key, legacy.get_state()[1])
    # The full uint32 range draws the generator's words unchanged (numpy's legacy bounded integers).
    np.testing.assert_array_equal(source.uint32s(1500), legacy.randint(0, 2**32, size=1500, dtype=np.uint32))
    source, legacy = NumPyRandomSource(seed), np.random.RandomState(seed)
    np.testing.assert_array_equal(source.normals(3001), legacy.standard_normal(3001))


def test_the_second_normal_of_a_pair_waits_for_the_next_draw():
    """`state.nextGauss = f * x1; return f * x2`: an odd draw leaves one for the next call."""
    source, legacy = NumPyRandomSource(7), np.random.RandomState(7)
    drawn = np.concatenate([source.normals(count) for count in (1, 0, 4, 7, 2, 1)])
    np.testing.assert_array_equal(drawn, legacy.standard_normal(15))


def test_mean_and_stdev_apply_in_double():
    """`nextGauss() * stdev + mean`."""
    gauss = np.random.RandomState(3).standard_normal(10)
    np.testing.assert_array_equal(NumPyRandomSource(3).normals(10, mean=0.5, stdev=2.0), gauss * 2.0 + 0.5)


def test_the_initial_latent_is_the_seeds_normals_in_row_major_order_as_float32():
    """generateLatentSamples: `MLShapedArray<Float32>(converting: random.normalShapedArray(sampleShape, ...))`."""
    shape = (1, 16, 8, 8)
    latent = initial_latent(42, shape)
    assert latent.dtype == np.float32 and latent.shape == shape
    doubles = np.random.RandomState(42).standard_normal(int(np.prod(shape)))
    np.testing.assert_array_equal(latent, doubles.astype(np.float32).reshape(shape))
    assert not np.array_equal(latent, initial_latent(43, shape))


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True, "0"])
def test_a_seed_the_app_cannot_hold_is_refused(seed):
    with pytest.raises(PipelineError, match="UInt32"):
        NumPyRandomSource(seed)
