"""A Versatile Diffusion system's configuration (Xu et al. 2023): the multi-flow network, the autoencoder of
its image latents, the CLIP whose text and image tokens are the two contexts, the text VAE whose latents the
text flows denoise, the schedule and sampling."""

from __future__ import annotations

from dataclasses import dataclass

from t2i.config import Config
from t2i.diffusion.config import SamplingConfig, ScheduleConfig
from t2i.encoders.clip import CLIPConfig
from t2i.encoders.tokenizer import WordTokenizer
from t2i.nn.autoencoder import AutoencoderConfig
from t2i.nn.multiflow import MultiFlowConfig
from t2i.nn.text_vae import TextVAEConfig
from t2i.nn.transformer import TransformerConfig
from t2i.nn.unet import UNetConfig


@dataclass(frozen=True)
class VDConfig(Config):
    """Everything that defines a VD system besides its weights and tokenizer."""

    net: MultiFlowConfig = MultiFlowConfig()
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    clip: CLIPConfig = CLIPConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    prediction: str = "eps"  # eps | v | x0
    sampling: SamplingConfig = SamplingConfig()
    sample_size: int = 64  # default image side in pixels
    text_vae: TextVAEConfig = TextVAEConfig(latent_dim=768)  # the text latent (VD's Optimus: 768 wide)
    text_scale: float = 1.0  # text flows denoise text_scale * z (1 / std of the VAE's posterior means)
    context_scale: float = 1.0  # contexts are VD's tokens / |pooled| times this (sqrt(E) gives unit-std tokens)

    def __post_init__(self) -> None:
        lat, unet = self.autoencoder.latent_channels, self.net.image
        if unet.in_channels != lat or unet.out_channels != lat:
            raise ValueError(f"a UNet with {unet.in_channels} -> {unet.out_channels} channels does not fit "
                             f"{lat}-channel latents")
        if unet.context_dim != self.clip.embed_dim:
            raise ValueError(f"the contexts are CLIP's projected tokens ({self.clip.embed_dim} wide); the network "
                             f"attends to {unet.context_dim}")
        if self.text_vae.latent_dim != self.net.text_dim:
            raise ValueError(f"the text flows denoise {self.net.text_dim}-wide vectors; the text VAE's latents are "
                             f"{self.text_vae.latent_dim} wide")

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE's factor times the UNet's downsampling."""
        return self.autoencoder.downscale * 2 ** self.net.image.downsamples


def tiny_config() -> VDConfig:
    """16 px images, a 2-level network over 4-channel latents and 16-wide text latents, a 16-wide CLIP."""
    vae = TextVAEConfig(len(WordTokenizer.for_shapes()), 40, 16, TransformerConfig(width=32, layers=1, heads=2),
                        TransformerConfig(width=32, layers=1, heads=2, causal=True))  # tiny_text_vae.toml's
    unet = UNetConfig(in_channels=4, out_channels=4, block_channels=(32, 64), num_res_blocks=1, attention_levels=(0,),
                      num_heads=4, context_dim=16, norm_groups=8)
    clip = CLIPConfig(16, dict(image_size=16, patch_size=4, transformer=dict(width=32, layers=1, heads=2)),
                      dict(width=32, layers=1, heads=2, max_length=12))
    return VDConfig(net=MultiFlowConfig(unet, text_dim=16), clip=clip,
                    autoencoder=AutoencoderConfig(channels=(32, 64), layers_per_block=1, norm_groups=8),
                    sampling=SamplingConfig(sampler="ddim", steps=3, guidance=3.0), sample_size=16, text_vae=vae)
