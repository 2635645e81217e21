"""Versatile Diffusion's text flows (Xu et al. 2023, sec. 3.2 and 4): image -> text is the (text, image) flow and
text variation the (text, text) flow; both denoise a text VAE latent (Optimus) that the VAE's decoder reads out.

Composition only: the network is t2i.nn.multiflow, the latent t2i.nn.text_vae, sampling the stage's."""

from __future__ import annotations

import torch
from PIL import Image

from t2i.nn.multiflow import Flow, FlowNet
from t2i.systems.request import GenerationRequest
from t2i.systems.stage import Guidance, StageRun, sample_stage, stage_denoiser


class TextFlows:
    """`caption(image, n)` and `vary_text(caption, n)` of a VD system (its net, text_vae, clip, contexts)."""

    def draw_text(self, flow: Flow, contexts: tuple[torch.Tensor, torch.Tensor], r: GenerationRequest,
                  generator: torch.Generator) -> list[str]:
        """Captions of one text-data flow: contexts (cond, uncond) (B, L, E), the request's sampler, steps, guidance."""
        cfg, (settings, scale) = self.config, self.sampling(r)
        cond, uncond = contexts
        guidance = Guidance(scale, {"context": uncond} if scale != 1 else None)
        den = stage_denoiser(FlowNet(self.net, flow), self.schedule, cfg.prediction, guidance, [])
        run = StageRun((cond.shape[0], cfg.net.text_dim), settings, {"context": cond}, device=self.device,
                       dtype=next(self.net.parameters()).dtype)
        z = sample_stage(den, run, generator) / cfg.text_scale  # (B, D): the VAE's latent
        return [self.clip.tokenizer.decode(ids) for ids in self.text_vae.generate(z.float()).cpu()]

    @torch.no_grad()
    def caption(self, image: Image.Image, n: int = 1, *, seed: int = 0, steps: int | None = None,
                guidance: float | None = None) -> list[str]:
        """n captions of an image: the (text, image) flow over its CLIP image tokens (VD's image -> text)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"caption needs n >= 1 (got {n!r})")
        r = GenerationRequest(("(caption)",) * n, seed=seed, steps=steps, guidance=guidance)  # sampling settings
        return self.draw_text(Flow("text", "image"), self.image_contexts(image, n), r,
                              torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def vary_text(self, caption: str, n: int = 4, *, seed: int = 0, steps: int | None = None,
                  guidance: float | None = None) -> list[str]:
        """n variations of a caption: the (text, text) flow over its CLIP text tokens (VD's text variation)."""
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError("the caption is empty: give the text to vary")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"vary_text needs n >= 1 (got {n!r})")
        r = GenerationRequest((caption,) * n, seed=seed, steps=steps, guidance=guidance)
        contexts = self.text_context([caption] * n), self.text_context([""] * n)
        return self.draw_text(Flow("text", "text"), contexts, r, torch.Generator().manual_seed(seed))
