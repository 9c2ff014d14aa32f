"""The app's sampler (docs/APP_CONTRACT.md, "The sampler") and the stock scheduler the reference runs it with."""

import numpy as np
import pytest
from diffusers import FlowMatchEulerDiscreteScheduler

from sd3coreml.verify.end_to_end.sampler import SHIFT, app_sigmas, app_timesteps, euler_step, unshifted_sigmas


@pytest.mark.parametrize(("steps", "timesteps"), [(4, [1000, 900, 750, 500]), (2, [1000, 750])])
def test_app_timesteps(steps, timesteps):
    np.testing.assert_allclose(app_timesteps(steps), timesteps, rtol=0, atol=1e-9)


@pytest.mark.parametrize("steps", [2, 4])
def test_stock_scheduler_with_explicit_sigmas_walks_the_apps_schedule(steps):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=SHIFT)
    scheduler.set_timesteps(sigmas=list(unshifted_sigmas(steps)))
    np.testing.assert_allclose(scheduler.timesteps.numpy(), app_timesteps(steps), rtol=1e-6)
    np.testing.assert_allclose(scheduler.sigmas.numpy(), app_sigmas(steps), rtol=1e-6)


def test_default_stock_schedule_is_not_the_apps():
    """Why the sigmas are passed explicitly: set_timesteps(4) spaces them otherwise."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=SHIFT)
    scheduler.set_timesteps(4)
    assert not np.allclose(scheduler.timesteps.numpy(), app_timesteps(4), atol=1.0)


def test_euler_step_matches_the_stock_scheduler():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=SHIFT)
    scheduler.set_timesteps(sigmas=list(unshifted_sigmas(4)))
    generator = np.random.default_rng(0)
    latent, velocity = (generator.standard_normal((1, 16, 4, 4)).astype(np.float32) for _ in range(2))
    sigmas = app_sigmas(4)
    import torch

    expected = scheduler.step(torch.from_numpy(velocity), scheduler.timesteps[0], torch.from_numpy(latent)).prev_sample
    np.testing.assert_allclose(
        euler_step(latent, velocity, sigmas[0], sigmas[1]), expected.numpy(), rtol=1e-6, atol=1e-6
    )
