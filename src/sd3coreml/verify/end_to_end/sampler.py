"""The app's sampler as the app computes it: `DiscreteFlowScheduler` in Swift `Float`.

MobileDiffuser `bfe2f28` runs ml-stable-diffusion's `DiscreteFlowScheduler` (`pipeline/
DiscreteFlowScheduler.swift`, its `linspace` in `Scheduler.swift`) with the step count and the
timestep shift of its `DiffusionModelKind` (2 or 4 steps, shift 3.0, handed over as
`StableDiffusionPipeline.Configuration.schedulerTimestepShift`). Here each Swift expression is
repeated operation by operation on numpy float32 scalars and arrays:

- the schedule: `t = linspace(1.0, 0.0, steps + 1)`, where Swift's `linspace` is
  `scale = (end - start) / Float(count - 1)` and element i is `Float(i) * scale + start`
  (not numpy's, which works in float64 and returns the end exactly: at 41 steps, for one,
  the app's last `t` is not 0); `sigma = shift * t / (1.0 + (shift - 1.0) * t)`, or `t` itself
  when the shift is 1;
- the timestep Conditioning receives: `sigma * 1000` in Float (`timestepsFromSigmas`); the
  scheduler's own `timeSteps` are `Int(t * 1000)`, truncated, and only pick the step's sigma
  (`timeSteps.firstIndex(of:)`, so two equal ones pick the first: from 1000 steps on);
- a step (`step`, `convertModelOutput`): `denoised = x - v * sigma`, `d = (x - denoised) / sigma`,
  `dt = sigma_next - sigma`, `x_next = x + d * dt`. The app keeps `denoised` and decodes the
  last step's (`StableDiffusion3Pipeline.swift`), not `x_next`.

The float32 assumptions: Swift's `Float` is IEEE 754 binary32 and every `+ - * /` rounds to
nearest, one operation at a time. Swift gives LLVM no fast-math flags, so `a * b + c` is not
fused into a multiply-add, a division is not turned into a multiplication by the reciprocal and
nothing is reassociated, also where the loops are vectorized. numpy's float32 ufuncs round each
element of each operation the same way; a Python float meeting a float32 value is made an
np.float32 first, as Swift's literals are `Float`.

The reference side hands diffusers' `FlowMatchEulerDiscreteScheduler` the unshifted `t` as
explicit sigmas (`unshifted_sigmas`): its `set_timesteps(steps)` spaces them otherwise.
"""

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from sd3coreml.errors import PipelineError

FLOAT = np.float32
# DiscreteFlowScheduler(trainStepCount: 1000), the pipeline's default.
TRAIN_STEPS = FLOAT(1000)


def swift_linspace(start: float, end: float, count: int) -> np.ndarray:
    """`linspace(_:_:_:)` of Scheduler.swift, in Float."""
    scale = (FLOAT(end) - FLOAT(start)) / FLOAT(count - 1)
    return np.arange(count).astype(FLOAT) * scale + FLOAT(start)


@dataclass(frozen=True)
class AppSchedule:
    """`DiscreteFlowScheduler(stepCount: steps, timeStepShift: shift)` as the app builds it."""

    steps: int
    shift: float

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise PipelineError(f"the app's sampler takes a positive whole number of steps, not {self.steps!r}")
        if not np.isfinite(FLOAT(self.shift)) or FLOAT(self.shift) <= 0:
            raise PipelineError(f"timestep shift {self.shift!r}: the app's shift is a positive Float, such as 3.0")

    @cached_property
    def t(self) -> np.ndarray:
        """`tDistribution`: `steps + 1` anchors from 1 down to (about) 0."""
        return swift_linspace(1.0, 0.0, self.steps + 1)

    @cached_property
    def sigmas(self) -> np.ndarray:
        """The `steps + 1` noise levels the app walks."""
        shift = FLOAT(self.shift)
        if shift == FLOAT(1.0):
            return self.t.copy()
        return shift * self.t / (FLOAT(1.0) + (shift - FLOAT(1.0)) * self.t)

    @cached_property
    def timesteps(self) -> np.ndarray:
        """What the app feeds Conditioning at each step: `sigmas.dropLast().map { $0 * trainSteps }`."""
        return self.sigmas[:-1] * TRAIN_STEPS

    @cached_property
    def scheduler_timesteps(self) -> tuple[int, ...]:
        """The scheduler's own `timeSteps`: `tDistribution.dropLast().map { Int($0 * trainSteps) }`."""
        return tuple(int(value) for value in self.t[:-1] * TRAIN_STEPS)

    def sigma_index(self, step: int) -> int:
        """`timeSteps.firstIndex(of: t) ?? counter`, where the pipeline passes `t = timeSteps[step]`."""
        return self.scheduler_timesteps.index(self.scheduler_timesteps[step])

    def step(self, step: int, latent: np.ndarray, velocity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`scheduler.step(output:timeStep:sample:)`: (the next latent, the denoised prediction).

        The denoised prediction is what `convertModelOutput` appends to `modelOutputs`, the
        pipeline's `denoisedLatents`.
        """
        index = self.sigma_index(step)
        sigma = self.sigmas[index]
        next_sigma = self.sigmas[index + 1] if index + 1 < len(self.sigmas) else FLOAT(0)
        x, v = np.asarray(latent, dtype=FLOAT), np.asarray(velocity, dtype=FLOAT)
        denoised = x - v * sigma
        d = (x - denoised) / sigma
        dt = next_sigma - sigma
        return x + d * dt, denoised


def unshifted_sigmas(steps: int) -> np.ndarray:
    """`t` of each step, from 1 down to (but not including) 0, as the stock scheduler takes them."""
    return np.linspace(1.0, 0.0, steps + 1)[:-1]
