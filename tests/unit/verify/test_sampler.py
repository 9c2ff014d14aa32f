"""The app's sampler in Float as MobileDiffuser bfe2f28 computes it, and the stock scheduler the reference runs.

The Swift lines quoted come from ml-stable-diffusion/swift/StableDiffusion/pipeline/ at bfe2f28:
Scheduler.swift (`linspace`) and DiscreteFlowScheduler.swift (`init`, `timestepsFromSigmas`,
`convertModelOutput`, `step`). Expected values are derived here, from those lines, one float32
operation at a time; nothing is taken from the module under test.
"""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from sd3coreml.errors import PipelineError
from sd3coreml.verify.end_to_end.sampler import AppSchedule, unshifted_sigmas

f = np.float32


def bits(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).view(np.uint32)


def hexes(*values: str) -> np.ndarray:
    return np.array([float.fromhex(value) for value in values], dtype=np.float32)


def swift_schedule(steps: int, shift: float):
    """DiscreteFlowScheduler.init written again from the Swift on np.float32 scalars: (t, sigmas, timesteps, Ints)."""
    shift, count = f(shift), steps + 1
    # let scale = (end - start) / Float(count - 1)
    scale = (f(0.0) - f(1.0)) / f(count - 1)
    # return (0..<count).map { Float($0)*scale + start }
    t = [f(index) * scale + f(1.0) for index in range(count)]
    # if timeStepShift == 1.0 { return t }
    # return timeStepShift * t / (1.0 + (timeStepShift - 1.0) * t)
    sigmas = [value if shift == f(1.0) else shift * value / (f(1.0) + (shift - f(1.0)) * value) for value in t]
    # return sigmas.dropLast().map { $0 * trainSteps }
    timesteps = [sigma * f(1000) for sigma in sigmas[:-1]]
    # self.timeSteps = tDistribution.dropLast().map { Int($0 * trainSteps) }
    ints = [int(value * f(1000)) for value in t[:-1]]
    return t, sigmas, timesteps, ints


def float64_then_rounded(steps: int, shift: float = 3.0):
    """What this module computed before: the schedule in float64, rounded to float32 once."""
    t = np.linspace(1.0, 0.0, steps + 1)
    sigmas = shift * t / (1.0 + (shift - 1.0) * t)
    return sigmas.astype(np.float32), (sigmas[:-1] * 1000.0).astype(np.float32)


# 4 steps: scale = (0.0 - 1.0) / Float(4) = -0.25 and t = 1, 0.75, 0.5, 0.25, 0, all exact.
# sigma(0.75) = 2.25 / 2.5: 0.9 is not a float, the nearest is 0x1.ccccccp-1 (0.89999998);
# times 1000 = 899.99997..., whose nearest float is 900 (floats lie 2^-14 apart there).
# sigma(0.5) = 1.5 / 2 = 0.75 and sigma(0.25) = 0.75 / 1.5 = 0.5, exact; Int(t * 1000) exact.
# 2 steps: scale = -0.5, t = 1, 0.5, 0 and sigma(0.5) = 0.75, all exact.
# These are the app's own comment (DiscreteFlowScheduler.swift):
#   "t     = [1.0, 0.75, 0.5, 0.25, 0.0]" / "sigma = [1.0, 0.9,  0.75, 0.5,  0.0]"
APP_SETTINGS = {
    4: (hexes("0x1p0", "0x1.ccccccp-1", "0x1.8p-1", "0x1p-1", "0x0p0"), [1000, 900, 750, 500], (1000, 750, 500, 250)),
    2: (hexes("0x1p0", "0x1.8p-1", "0x0p0"), [1000, 750], (1000, 500)),
}


@pytest.mark.parametrize("steps", sorted(APP_SETTINGS))
def test_the_apps_schedule_at_its_own_step_counts_bit_for_bit(steps):
    sigmas, timesteps, ints = APP_SETTINGS[steps]
    schedule = AppSchedule(steps, 3.0)
    np.testing.assert_array_equal(bits(schedule.sigmas), bits(sigmas))
    np.testing.assert_array_equal(bits(schedule.timesteps), bits(timesteps))
    assert schedule.scheduler_timesteps == ints
    assert schedule.sigmas.dtype == schedule.timesteps.dtype == np.float32


def test_three_steps_by_hand_where_float64_rounded_once_differs():
    # scale = (0.0 - 1.0) / Float(3): -1/3 rounds to -0x1.555556p-2 (away from zero).
    # t1 = Float(1) * scale + 1 = 0x1.555554p-1, t2 = Float(2) * scale + 1 = 0x1.555554p-2, both exact;
    # t3 = Float(3) * scale = -(1 + 2^-25), which rounds to -1, so t3 = 0.
    # sigma1: 3 * t1 = 0x1.fffffep-1 and 1 + 2 * t1 = 0x1.2aaaaap+1, exact; their quotient
    # 0.85714283524... lies 2.9e-8 above 0x1.b6db6cp-1 and 3.0e-8 below the next float.
    # sigma2: 3 * t2 = 0x1.fffffep-2 over 1 + 2 * t2 = 0x1.aaaaaap+0 is 0.59999997854..., nearest 0x1.333332p-1.
    # Timesteps: sigma * 1000 = 857.14280605... -> 0x1.ac9248p+9 and 599.99996423... -> 0x1.2bfffep+9.
    schedule = AppSchedule(3, 3.0)
    np.testing.assert_array_equal(bits(schedule.t), bits(hexes("0x1p0", "0x1.555554p-1", "0x1.555554p-2", "0x0p0")))
    np.testing.assert_array_equal(
        bits(schedule.sigmas), bits(hexes("0x1p0", "0x1.b6db6cp-1", "0x1.333332p-1", "0x0p0"))
    )
    np.testing.assert_array_equal(bits(schedule.timesteps), bits(hexes("0x1.f4p+9", "0x1.ac9248p+9", "0x1.2bfffep+9")))
    # Int(t * 1000) truncates: 666.66663 -> 666, 333.33331 -> 333.
    assert schedule.scheduler_timesteps == (1000, 666, 333)
    # The float64 schedule rounded once gives 6/7 -> 0x1.b6db6ep-1 and 0.6 -> 0x1.333334p-1: 1 ulp off each.
    old_sigmas, old_timesteps = float64_then_rounded(3)
    assert list(bits(old_sigmas) - bits(schedule.sigmas)) == [0, 1, 1, 0]
    assert not np.array_equal(bits(old_timesteps), bits(schedule.timesteps))


@pytest.mark.parametrize("steps", [1, 3, 8, 28, 41])
@pytest.mark.parametrize("shift", [3.0, 1.0, 2.5])
def test_any_step_count_follows_the_swift_float_arithmetic(steps, shift):
    t, sigmas, timesteps, ints = swift_schedule(steps, shift)
    schedule = AppSchedule(steps, shift)
    np.testing.assert_array_equal(bits(schedule.t), bits(t))
    np.testing.assert_array_equal(bits(schedule.sigmas), bits(sigmas))
    np.testing.assert_array_equal(bits(schedule.timesteps), bits(timesteps))
    assert schedule.scheduler_timesteps == tuple(ints)


def test_float64_rounded_once_is_not_the_app_at_other_step_counts():
    """So the tests above could fail: the old arithmetic is off by several ulps at 28 steps."""
    _, sigmas, timesteps, _ = swift_schedule(28, 3.0)
    old_sigmas, old_timesteps = float64_then_rounded(28)
    assert np.abs(bits(old_sigmas).astype(np.int64) - bits(sigmas)).max() >= 2
    assert not np.array_equal(bits(old_timesteps), bits(timesteps))


def test_at_41_steps_the_apps_last_sigma_is_not_zero():
    """Swift's linspace ends at Float(41) * scale + 1, not at 0: the last anchor is 2^-24."""
    t, sigmas, _, _ = swift_schedule(41, 3.0)
    assert t[-1] == f(2.0**-24) and sigmas[-1] > 0
    assert AppSchedule(41, 3.0).sigmas[-1] == sigmas[-1]


def test_equal_scheduler_timesteps_pick_the_first_sigma():
    """`let stepIndex = timeSteps.firstIndex(of: t) ?? counter`: from 1000 steps on, Int(t * 1000) repeats."""
    schedule = AppSchedule(1000, 3.0)
    ints = schedule.scheduler_timesteps
    assert len(set(ints)) < len(ints)
    picked = [schedule.sigma_index(step) for step in range(1000)]
    assert picked == [ints.index(value) for value in ints]
    assert any(index != step for step, index in enumerate(picked))


def swift_step(x: np.float32, v: np.float32, sigma: np.float32, next_sigma: np.float32):
    """One element of convertModelOutput and step, on np.float32 scalars: (prev_x, denoised)."""
    # let denoised = latentScalars[i] - noiseScalars[i] * sigma        (convertModelOutput)
    denoised = x - v * sigma
    # let d = (x - denoised) / sigma
    d = (x - denoised) / sigma
    # let dt = prevSigma - sigma
    dt = next_sigma - sigma
    # let prev_x = x + d * dt
    return x + d * dt, denoised


@pytest.mark.parametrize(("steps", "step"), [(4, 0), (4, 1), (4, 3), (2, 1), (3, 1)])
def test_a_step_follows_the_swift_lines(steps, step):
    _, sigmas, _, _ = swift_schedule(steps, 3.0)
    generator = np.random.default_rng(step)
    latent, velocity = (generator.standard_normal((1, 16, 8, 8)).astype(np.float32) for _ in range(2))
    expected = [swift_step(x, v, sigmas[step], sigmas[step + 1]) for x, v in zip(latent.flat, velocity.flat)]
    next_latent, denoised = AppSchedule(steps, 3.0).step(step, latent, velocity)
    np.testing.assert_array_equal(bits(next_latent).ravel(), bits([prev for prev, _ in expected]))
    np.testing.assert_array_equal(bits(denoised).ravel(), bits([x0 for _, x0 in expected]))
    assert next_latent.shape == denoised.shape == latent.shape


def test_the_apps_step_is_not_the_one_rounding_euler_step():
    """`x + (sigma_next - sigma) * v` gives other float32 values than the app's route through `denoised`."""
    _, sigmas, _, _ = swift_schedule(4, 3.0)
    generator = np.random.default_rng(0)
    latent, velocity = (generator.standard_normal(4096).astype(np.float32) for _ in range(2))
    one_rounding = (latent.astype(np.float64) + (float(sigmas[2]) - float(sigmas[1])) * velocity).astype(np.float32)
    app = AppSchedule(4, 3.0).step(1, latent, velocity)[0]
    assert not np.array_equal(bits(app), bits(one_rounding))
    np.testing.assert_allclose(app, one_rounding, rtol=1e-5, atol=1e-6)


def test_the_last_denoised_prediction_is_not_the_final_latent():
    """What the app decodes (x - v * sigma at the last step) and its final latent differ in float32 at
    2 steps (last sigma 0.75); at 4 steps the last sigma is 0.5, which makes `/ sigma` and `* dt` exact."""
    generator = np.random.default_rng(1)
    latent, velocity = (generator.standard_normal(4096).astype(np.float32) for _ in range(2))
    final, denoised = AppSchedule(2, 3.0).step(1, latent, velocity)
    np.testing.assert_array_equal(bits(denoised), bits(latent - velocity * f(0.75)))
    assert not np.array_equal(bits(final), bits(denoised))


@pytest.mark.parametrize(
    ("steps", "shift"), [(0, 3.0), (2.0, 3.0), (True, 3.0), (4, 0.0), (4, -1.0), (4, float("nan"))]
)
def test_a_schedule_the_app_cannot_run_is_refused(steps, shift):
    with pytest.raises(PipelineError):
        AppSchedule(steps, shift)


@pytest.mark.parametrize("steps", [2, 4])
@pytest.mark.parametrize("shift", [3.0, 2.0])
def test_stock_scheduler_with_explicit_sigmas_walks_the_apps_schedule(steps, shift):
    """The reference's schedule: the same values, to float32 rounding."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(sigmas=list(unshifted_sigmas(steps)))
    schedule = AppSchedule(steps, shift)
    np.testing.assert_allclose(scheduler.timesteps.numpy(), schedule.timesteps, rtol=1e-6)
    np.testing.assert_allclose(scheduler.sigmas.numpy(), schedule.sigmas, rtol=1e-6)


def test_default_stock_schedule_is_not_the_apps():
    """Why the sigmas are passed explicitly: set_timesteps(4) spaces them otherwise."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(4)
    assert not np.allclose(scheduler.timesteps.numpy(), AppSchedule(4, 3.0).timesteps, atol=1.0)


def test_stock_euler_step_is_the_apps_to_float32_rounding():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(sigmas=list(unshifted_sigmas(4)))
    generator = np.random.default_rng(0)
    latent, velocity = (generator.standard_normal((1, 16, 4, 4)).astype(np.float32) for _ in range(2))
    expected = scheduler.step(torch.from_numpy(velocity), scheduler.timesteps[0], torch.from_numpy(latent)).prev_sample
    next_latent, _ = AppSchedule(4, 3.0).step(0, latent, velocity)
    np.testing.assert_allclose(next_latent, expected.numpy(), rtol=1e-6, atol=1e-6)
