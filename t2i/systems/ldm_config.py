"""An LDM system's configuration (Rombach et al. 2022): UNet, autoencoder, text encoder, schedule, sampling,
and whether an inpainting twin of the UNet ships beside it (as Stable Diffusion's inpainting model)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from t2i.config import Config
from t2i.diffusion.config import SamplingConfig, ScheduleConfig
from t2i.encoders.registry import TextConfig
from t2i.nn.autoencoder import AutoencoderConfig
from t2i.nn.unet import UNetConfig


@dataclass(frozen=True)
class LDMConfig(Config):
    """Everything that defines an LDM system besides its weights and tokenizer."""

    unet: UNetConfig = UNetConfig()
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    text: TextConfig = TextConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    prediction: str = "eps"  # eps | v | x0
    sampling: SamplingConfig = SamplingConfig()
    sample_size: int = 512  # default image side in pixels
    inpaint_unet: bool = False  # the folder also holds an inpainting twin of `unet`, used when a mask is given

    def __post_init__(self) -> None:
        lat = self.autoencoder.latent_channels
        if self.unet.out_channels != lat or self.unet.in_channels not in (lat, 2 * lat + 1):
            raise ValueError(f"a UNet with {self.unet.in_channels} -> {self.unet.out_channels} channels does not fit "
                             f"{lat}-channel latents (in: {lat}, or {2 * lat + 1} for inpainting; out: {lat})")

    @property
    def inpainting(self) -> bool:
        """The UNet takes the mask and the masked image's latents as extra input channels."""
        return self.unet.in_channels == 2 * self.autoencoder.latent_channels + 1

    def inpainting_twin(self) -> UNetConfig:
        """The inpainting UNet's config: `unet` with the mask and the masked image's latents as inputs."""
        return dataclasses.replace(self.unet, in_channels=2 * self.autoencoder.latent_channels + 1)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE's factor times the UNet's downsampling."""
        return self.autoencoder.downscale * 2 ** (len(self.unet.block_channels) - 1)
