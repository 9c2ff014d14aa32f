"""Turn Stable Diffusion 3 checkpoints into Core ML resources for the Neural Engine."""

__version__ = "0.1.0"
