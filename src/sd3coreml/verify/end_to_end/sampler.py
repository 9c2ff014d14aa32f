"""The app's sampler: flow matching with shift 3, a fixed number of Euler steps, guidance 1.

As docs/APP_CONTRACT.md ("The sampler") has it: `t = linspace(1, 0, steps + 1)`,
`sigma = 3t / (1 + 2t)`, the model sees `sigma * 1000`, and `x += (sigma[i+1] - sigma[i]) * v`.
diffusers' `FlowMatchEulerDiscreteScheduler.set_timesteps(steps)` spaces its timesteps
differently, so the reference side hands it the unshifted `t` as explicit sigmas instead.
"""

import numpy as np

SHIFT = 3.0


def unshifted_sigmas(steps: int) -> np.ndarray:
    """`t` of each step, from 1 down to (but not including) 0."""
    return np.linspace(1.0, 0.0, steps + 1)[:-1]


def app_sigmas(steps: int) -> np.ndarray:
    """The `steps + 1` noise levels the app walks, ending at 0."""
    t = np.linspace(1.0, 0.0, steps + 1)
    return SHIFT * t / (1.0 + (SHIFT - 1.0) * t)


def app_timesteps(steps: int) -> np.ndarray:
    """What the app feeds the Conditioning model at each step."""
    return app_sigmas(steps)[:-1] * 1000.0


def euler_step(latent: np.ndarray, velocity: np.ndarray, sigma: float, next_sigma: float) -> np.ndarray:
    return (latent + (next_sigma - sigma) * velocity.astype(np.float32)).astype(np.float32)
