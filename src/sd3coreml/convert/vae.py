"""The SD3 VAE decoder: already-scaled latent `z` in, `image` out (nominally [-1, 1])."""

from pathlib import Path

import torch
from diffusers import AutoencoderKL

from sd3coreml.convert.conversion import TensorSpec, convert_module
from sd3coreml.convert.package import ARTIFACT_KEY, save_package
from sd3coreml.errors import PipelineError


class VAEDecoderForApp(torch.nn.Module):
    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, z):
        # The app applies latent / scaling_factor + shift_factor itself.
        return self.vae.decode(z, return_dict=False)[0]


def load_vae(vae_dir: Path) -> AutoencoderKL:
    if not (vae_dir / "config.json").is_file():
        raise PipelineError(f"{vae_dir}: no config.json; point 'components' at an SD3 diffusers-layout folder")
    return AutoencoderKL.from_pretrained(str(vae_dir), torch_dtype=torch.float32).eval()


def convert_vae_decoder(vae_dir: Path, latent_size: tuple[int, int], target: str, out: Path) -> None:
    vae = load_vae(Path(vae_dir))
    z_shape = (1, vae.config.latent_channels, *latent_size)
    mlmodel = convert_module(VAEDecoderForApp(vae), [TensorSpec("z", z_shape)], ["image"], target)
    save_package(mlmodel, Path(out), {ARTIFACT_KEY: "SD3 VAE decoder"})
