"""unCLIP / DALL·E 2 (Ramesh et al. 2022): a CLIP, a diffusion prior over its image embeddings (sec. 2.2), a decoder
conditioned on the embedding and optionally the caption (sec. 2.1) and a super-resolution stage without text: three
`StageConfig`s of the cascade machinery. `vary` decodes an image's own embedding (sec. 3.1), moved toward a text
when asked (text diffs, sec. 3.3); `interpolate` slerps two images' embeddings, decoder noise fixed (sec. 3.2)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from t2i.diffusion.config import SamplingConfig
from t2i.diffusion.samplers import Generators
from t2i.encoders.clip import CLIPModel
from t2i.encoders.tokenizer import WordTokenizer
from t2i.nn.prior import slerp, text_diff
from t2i.systems.base import (clip_home, image_to_tensor, load_clip, load_parts, read_system, save_clip, save_parts,
                              tensor_to_images, write_system_json)
from t2i.systems.cascade import NETWORKS, StageConfig
from t2i.systems.request import GenerationRequest
from t2i.systems.stage import Guidance, StageRun, aug_level_input, augmented_lowres, sample_stage, stage_denoiser
from t2i.systems.system import SystemBase, register
from t2i.systems.unclip_config import UnCLIPConfig, clip_text, tiny_config

MIN_SIDE = 8  # smaller input images are refused


@register("unclip")
class UnCLIP(SystemBase):
    """`generate(prompt)`: text -> prior -> decoder -> SR; `vary(image, n)`, `interpolate(a, b, frames)`."""

    def __init__(self, config: UnCLIPConfig, clip: CLIPModel, name: str = "unclip"):
        super().__init__()
        self.config, self.clip, self.name = config, clip, name
        self.nets = nn.ModuleList(NETWORKS[s.network][1](NETWORKS[s.network][0].from_dict(s.net)) for s in config.stages)
        self.schedules = [s.schedule.build() for s in config.stages]

    @classmethod
    def tiny(cls, seed: int = 0) -> "UnCLIP":
        """A tiny random system (`tiny_config`), for contract tests."""
        torch.manual_seed(seed)
        config = tiny_config()
        return cls(config, CLIPModel(config.clip, WordTokenizer.for_shapes()), "tiny-unclip")

    @property
    def stages(self) -> tuple[StageConfig, ...]:
        return self.config.stages

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(("txt2img", "vary"))

    @property
    def default_sampling(self) -> SamplingConfig:
        return self.config.stages[1].sampling

    @property
    def plan(self) -> tuple[SamplingConfig, float]:
        """The default sampling settings and guidance scale (variations and interpolations)."""
        return self.default_sampling, self.default_sampling.guidance

    def total_steps(self, r: GenerationRequest) -> int:
        return (self.config.prior_picks + 2) * self.settings(r)[1]

    def run(self, r: GenerationRequest, progress: Callable[[int], None] | None,
            generator: Generators) -> torch.Tensor:
        settings, scale = self.sampling(r)
        text = (clip_text(self.clip, r.batch), clip_text(self.clip, [r.negative_prompt] * len(r.batch)))
        prior, schedule, stage = self.nets[0], self.schedules[0], self.stages[0]
        guidance = Guidance(stage.sampling.guidance, text[1] if stage.sampling.guidance != 1 else None)
        den = stage_denoiser(prior, schedule, stage.prediction, guidance, [])
        run = StageRun((len(r.batch), *stage.shape), dataclasses.replace(stage.sampling, sampler=settings.sampler,
                       steps=settings.steps), text[0], progress=progress)
        draws = torch.stack([prior.denormalize(sample_stage(den, run, generator))
                             for _ in range(self.config.prior_picks)])  # (K, B, D)
        best = (F.normalize(draws, dim=-1) * text[0]["pooled"]).sum(-1).argmax(0)  # (B,) closest to the text
        return self.decode(draws[best, torch.arange(len(r.batch))], text, (settings, scale), generator, progress)

    def decode(self, embed: torch.Tensor, text: tuple, plan: tuple[SamplingConfig, float], generator: Generators,
               progress: Callable[[int], None] | None = None, shared: bool = False) -> torch.Tensor:
        """Image embeddings (B, D) + caption inputs (cond, uncond) -> images (B, 3, H, W) in [0, 1]; `shared`: one
        noise for every image (interpolations; `generator` is then one generator, else one or one per image)."""
        (settings, scale), b, x = plan, embed.shape[0], embed
        for stage, net, schedule in zip(self.stages[1:], self.nets[1:], self.schedules[1:]):
            cond, uncond, concat, extra = {}, None, [], None
            if stage.previous == "embedding":
                cond, uncond = {**text[0], "image_embed": x}, {**text[1], "image_embed": net.null.expand(b, -1)}
            else:  # noise augmentation of the low-res image (Ho et al. 2022, sec. 4.3)
                parts, state = ([x[i:i + 1] for i in range(b)], generator.get_state()) if shared else ([x], None)
                concat = [torch.cat([augmented_lowres(p, stage.shape[1:], schedule, stage.lowres_noise,
                                                      generator.set_state(state) if shared else generator) for p in parts])]
                extra = aug_level_input(net, schedule, stage.lowres_noise, b)
            w = scale if uncond is not None else 1.0
            den = stage_denoiser(net, schedule, stage.prediction, Guidance(w, uncond if w != 1 else None), concat,
                                 extra)
            noise = torch.randn((1, *stage.shape), generator=generator).expand(b, -1, -1, -1) if shared else None
            run = StageRun((b, *stage.shape), dataclasses.replace(stage.sampling, sampler=settings.sampler,
                           steps=settings.steps), cond, noise=noise, progress=progress)
            x = sample_stage(den, run, generator)
        return (x / 2 + 0.5).clamp(0, 1).float().cpu()

    @torch.no_grad()
    def embed_image(self, image: Image.Image) -> torch.Tensor:
        """A PIL image -> its unit CLIP image embedding (1, D); a tiny image is a one-line error."""
        if min(image.size) < MIN_SIDE:
            raise ValueError(f"the image is {image.size[0]}x{image.size[1]} px; unCLIP needs at least {MIN_SIDE} px a side")
        side = self.config.clip.image.image_size
        return self.clip.encode_image(image_to_tensor(image, (side, side)))

    @torch.no_grad()
    def vary(self, image: Image.Image, n: int = 4, *, toward: str | None = None, amount: float = 0.5, source: str = "",
             seed: int = 0) -> list[Image.Image]:
        """n variations of an image (its CLIP embedding decoded anew); `toward`: a text diff of `amount` from the
        caption `source` (sec. 3.3)."""
        if n < 1 or not 0 <= amount <= 1:
            raise ValueError(f"vary needs n >= 1 and amount in [0, 1] (got n={n}, amount={amount})")
        embed, caption = self.embed_image(image), toward or ""
        if toward:
            t = clip_text(self.clip, [toward, source])["pooled"]
            embed = text_diff(embed, t[:1], t[1:], amount)
        text = (clip_text(self.clip, [caption] * n), clip_text(self.clip, [""] * n))
        return tensor_to_images(self.decode(embed.expand(n, -1), text, self.plan, torch.Generator().manual_seed(seed)))

    @torch.no_grad()
    def interpolate(self, image_a: Image.Image, image_b: Image.Image, frames: int = 8, seed: int = 0) -> list[Image.Image]:
        """`frames` images along the slerp from a's embedding to b's, the decoder's noise the same in each (sec. 3.2)."""
        if frames < 2:
            raise ValueError(f"interpolate needs at least 2 frames (got {frames})")
        embed = slerp(self.embed_image(image_a), self.embed_image(image_b), torch.linspace(0, 1, frames))
        text = (clip_text(self.clip, [""] * frames), clip_text(self.clip, [""] * frames))
        return tensor_to_images(self.decode(embed, text, self.plan, torch.Generator().manual_seed(seed), shared=True))

    def save(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        """system.json, the stages and the CLIP (unless config.clip_from names the system it is shared with)."""
        own_clip = not self.config.clip_from
        folder = save_parts(Path(folder), {"stages": self.nets, **({"clip": self.clip} if own_clip else {})}, dtype)
        if own_clip:
            save_clip(self.clip, folder)
        write_system_json(folder, "unclip", 1, self.name, self.config)
        return folder

    @classmethod
    def load(cls, folder: str | Path, name: str | None = None) -> "UnCLIP":
        folder = Path(folder)
        config, saved = read_system(folder, "unclip", 1, UnCLIPConfig)
        home = clip_home(folder, config.clip_from)
        system = cls(config, load_clip(config.clip, home), name or saved)
        load_parts(folder, {"stages": system.nets})
        load_parts(home, {"clip": system.clip})
        return system.eval()
