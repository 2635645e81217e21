"""An unCLIP system's configuration (Ramesh et al. 2022): its CLIP, three stage configs (the prior over image
embeddings, the embedding-conditioned decoder, super-resolution) and the prior's pick-the-closest option; the
caption inputs both text-conditioned stages take from the CLIP."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from t2i.config import Config
from t2i.diffusion.config import SamplingConfig
from t2i.encoders.clip import CLIPConfig, CLIPModel
from t2i.nn.prior import Prior, PriorConfig
from t2i.nn.unclip_decoder import DecoderConfig, EmbeddingDecoder
from t2i.systems.cascade import NETWORKS, StageConfig

NETWORKS.update(unclip_prior=(PriorConfig, Prior), unclip_decoder=(DecoderConfig, EmbeddingDecoder))
KINDS = ("unclip_prior", "unclip_decoder", "unet")


@dataclass(frozen=True)
class UnCLIPConfig(Config):
    """The CLIP, the stages (prior, decoder, super-resolution) and how many prior draws to choose from."""

    clip: CLIPConfig = CLIPConfig()
    stages: tuple[StageConfig, ...] = ()
    prior_picks: int = 1  # embeddings drawn per image; the one closest to the text embedding is kept (sec. 2.2)
    clip_from: str = ""  # a system (shipped name or folder) whose CLIP this one uses, not stored again ("": its own)

    def __post_init__(self) -> None:
        kinds = tuple(s.network for s in self.stages)
        if kinds != KINDS or self.prior_picks < 1:
            raise ValueError(f"unCLIP's stages are {', '.join(KINDS)} (got {kinds}) and prior_picks >= 1")


def clip_text(clip: CLIPModel, captions: list[str]) -> dict[str, torch.Tensor]:
    """The caption inputs of the prior and decoder: CLIP's token states, their mask and the unit text embedding."""
    pooled, tokens, mask = clip.text(captions)  # (B, D), (B, L, D), (B, L)
    return {"context": tokens, "context_mask": mask, "pooled": F.normalize(clip.text_projection(pooled), dim=-1)}


def tiny_config(steps: int = 3) -> UnCLIPConfig:
    """CLIP (D = 16, 16 px) -> prior -> 16 px decoder with caption -> 32 px SR: for contract tests."""
    run = SamplingConfig(sampler="ddim", steps=steps, guidance=3.0, spacing="linspace", offset=0)
    clip = CLIPConfig(16, dict(image_size=16, patch_size=4, transformer=dict(width=32, layers=1, heads=2)),
                      dict(width=32, layers=1, heads=2, max_length=12))
    unet = dict(out_channels=3, block_channels=(16, 32), num_res_blocks=1, attention_levels=(1,), num_heads=2,
                attention_block="adm", norm_groups=8)
    prior = dict(dim=16, token_dim=32, text_dim=16, max_tokens=12, transformer=dict(width=32, layers=1, heads=2,
                                                                                      causal=True))
    decoder = dict(unet=dict(unet, in_channels=3, context_dim=32, pooled_dim=32), embed_dim=16, token_dim=32,
                   text_dim=16)
    stages = (StageConfig("unclip_prior", prior, (16,), prediction="x0", sampling=run),
              StageConfig("unclip_decoder", decoder, (3, 16, 16), sampling=run, previous="embedding"),
              StageConfig("unet", dict(unet, in_channels=6, context_dim=None), (3, 32, 32), sampling=run,
                          previous="lowres", lowres_noise=0.1))
    return UnCLIPConfig(CLIPConfig.from_dict(clip.to_dict()), stages)
