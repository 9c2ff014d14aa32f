"""The app's noise for a seed: ml-stable-diffusion's `NumPyRandomSource`, as at MobileDiffuser `bfe2f28`.

The app draws its initial latent with the configuration's `rngType`, which it leaves at the
default `.numpyRNG` (`StableDiffusionPipeline.Configuration.swift`), from the `UInt32` seed it
logs as `[SD3] seed:` (`ContentView.swift`). `NumPyRandomSource.swift` is NumPy's legacy
randomkit:

- a 32-bit Mersenne Twister seeded by `init_genrand` (`key[i] = 1812433253 * (s ^ (s >> 30)) + i`,
  modulo 2^32), twisted 624 words at a time and tempered;
- a double from two words, `((a >> 5) * 67108864 + (b >> 6)) / 2^53`;
- normals by the polar method, two per accepted pair: `f = sqrt(-2 log(r2) / r2)`, returned
  `f * x2` first, `f * x1` kept for the next call;
- `nextNormal` is `gauss * stdev + mean`, in Double.

`generateLatentSamples` (`StableDiffusion3Pipeline.swift`) fills the MMDiT's latent shape in
row-major order with `stdev = initNoiseSigma` (1 for `DiscreteFlowScheduler`) and converts the
Doubles to Float32, rounding to nearest.

Assumptions: Swift's Double arithmetic is IEEE binary64 operation by operation (no fused
multiply-add); `log` here is the C library's (`math.log`, as NumPy's legacy generator calls it),
where the app calls Darwin's. The two may differ in the last bit of a double now and then,
which reaches the Float32 latent only when a value lies within that bit of a rounding boundary
(about one value in 2^28).
"""

import math

import numpy as np

from sd3coreml.errors import PipelineError

N, M = 624, 397
MATRIX_A = np.uint32(0x9908B0DF)
UPPER_MASK, LOWER_MASK = np.uint32(0x80000000), np.uint32(0x7FFFFFFF)
SEED_MAX = 0xFFFFFFFF


def seeded_key(seed: int) -> np.ndarray:
    """`init(seed:)`: the 624 words of the state for a `UInt32` seed."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= SEED_MAX:
        raise PipelineError(f"seed {seed!r}: the app's seeds are UInt32, 0 to {SEED_MAX}; choose one in that range")
    key, s = [], int(seed)
    for i in range(N):
        key.append(s)
        s = (1812433253 * (s ^ (s >> 30)) + i + 1) & 0xFFFFFFFF
    return np.array(key, dtype=np.uint32)


def twisted(key: np.ndarray) -> np.ndarray:
    """The state after one refill of `nextUInt32`; in three runs because word i takes word i - 227's new value."""
    old, new = key, key.copy()

    def mixed(first: int, last: int) -> np.ndarray:
        y = (old[first:last] & UPPER_MASK) | (old[first + 1 : last + 1] & LOWER_MASK)
        return (y >> 1) ^ ((y & 1) * MATRIX_A)

    new[: N - M] = old[M:] ^ mixed(0, N - M)
    new[N - M : 2 * (N - M)] = new[: N - M] ^ mixed(N - M, 2 * (N - M))
    new[2 * (N - M) : N - 1] = new[N - M : M - 1] ^ mixed(2 * (N - M), N - 1)
    y = (old[N - 1] & UPPER_MASK) | (new[0] & LOWER_MASK)
    new[N - 1] = new[M - 1] ^ (y >> 1) ^ ((y & 1) * MATRIX_A)
    return new


def tempered(words: np.ndarray) -> np.ndarray:
    y = words ^ (words >> 11)
    y ^= (y << 7) & np.uint32(0x9D2C5680)
    y ^= (y << 15) & np.uint32(0xEFC60000)
    return y ^ (y >> 18)


def doubles(words: np.ndarray) -> np.ndarray:
    """`nextDouble` of each row of two words: 53 random bits in [0, 1)."""
    high, low = (words[:, 0] >> 5).astype(np.float64), (words[:, 1] >> 6).astype(np.float64)
    return (high * 67108864.0 + low) / 9007199254740992.0


class NumPyRandomSource:
    """The app's random source for one seed; draws continue where the last one stopped."""

    def __init__(self, seed: int):
        self.key = seeded_key(seed)
        self.ahead = np.empty(0, dtype=np.uint32)  # tempered words of refills made, not drawn yet
        self.next_gauss: float | None = None

    def peek(self, count: int) -> np.ndarray:
        """The next `count` words of `nextUInt32`, without drawing them."""
        while len(self.ahead) < count:
            self.key = twisted(self.key)
            self.ahead = np.concatenate([self.ahead, tempered(self.key)])
        return self.ahead[:count]

    def uint32s(self, count: int) -> np.ndarray:
        words = self.peek(count).copy()
        self.ahead = self.ahead[count:]
        return words

    def gaussians(self, count: int) -> np.ndarray:
        """`count` calls of `nextGauss`."""
        values = []
        if count > 0 and self.next_gauss is not None:
            values.append(self.next_gauss)
            self.next_gauss = None
        while len(values) < count:
            pairs = (count - len(values) + 1) // 2
            tries = int(pairs / (math.pi / 4)) + 16
            words = self.peek(4 * tries).reshape(tries, 4)
            x1, x2 = (2.0 * doubles(words[:, pair : pair + 2]) - 1.0 for pair in (0, 2))
            r2 = x1 * x1 + x2 * x2
            accepted = np.flatnonzero((r2 < 1.0) & (r2 != 0.0))[:pairs]
            used = tries if len(accepted) < pairs else int(accepted[-1]) + 1
            self.uint32s(4 * used)
            for index in accepted:
                f = math.sqrt(-2.0 * math.log(r2[index]) / r2[index])
                values.append(f * x2[index])
                if len(values) < count:
                    values.append(f * x1[index])
                else:
                    self.next_gauss = f * x1[index]
        return np.array(values, dtype=np.float64)

    def normals(self, count: int, mean: float = 0.0, stdev: float = 1.0) -> np.ndarray:
        """`normalArray(count:mean:stdev:)`, in Double."""
        return self.gaussians(count) * stdev + mean


def initial_latent(seed: int, shape: tuple[int, ...], stdev: float = 1.0) -> np.ndarray:
    """`generateLatentSamples` for one image: the seed's normals in `shape`, converted to Float32."""
    normals = NumPyRandomSource(seed).normals(math.prod(shape), 0.0, stdev)
    return normals.astype(np.float32).reshape(shape)
