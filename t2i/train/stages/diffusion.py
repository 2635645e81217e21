"""The diffusion stage: a denoiser over pixels or a frozen autoencoder's latents, optionally text-conditioned.

The network is wrapped by `t2i.diffusion` (DiscreteDenoiser, any prediction type) and trained
with `diffusion_loss`. Captions go through a jointly trained text encoder into
cond = {"context": tokens, "context_mask": mask} (+ "pooled"), and are dropped to "" with
probability p_uncond so classifier-free guidance works at sampling time (Ho & Salimans 2022).

Cascade and inpainting stages take image conditioning as extra input channels, cond["concat"],
through the `ConcatInputs` network wrapper: `lowres_size` trains a super-resolution stage (pixels) on
the noise-augmented low-res image (optionally on random `crop_size` crops, as GLIDE's upsampler);
`inpaint` erases random regions and passes the mask and the erased image (GLIDE sec. 3.2), or over
latents the mask resized to them and the erased image's latents (Stable Diffusion's inpainting model).
A network with `aug_level_embed` is also given each sample's augmentation level as `aug_level` (Imagen).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from t2i.diffusion.config import SamplingConfig, ScheduleConfig
from t2i.encoders.registry import TEXT_ENCODERS, TextConfig
from t2i.io.weights import system_folder
from t2i.train.config import RecipeError, TableConfig, bad
from t2i.train.networks import build_network
from t2i.train.registry import STAGES
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
    text_encoder: str = "word"  # a key of t2i.encoders TEXT_ENCODERS (word: trained jointly; minilm) | none
    text: dict = field(default_factory=dict)  # the text encoder's config fields
    pooled: bool = False  # also pass the pooled text vector to the network as `pooled`
    p_uncond: float = 0.1  # caption dropout for classifier-free guidance
    first_stage: str = ""  # an autoencoder run / checkpoint, or a t2i LDM folder or shipped system: train on its latents
    init_from: str = ""  # a t2i system folder, shipped system ("ldm") or cascade stage ("glide/base") to start from
    latent_scale: float = 0.0  # replaces the first stage's scaling_factor (1 / latent std); 0: keep it
    sampler: str = "dpmpp_2m"
    sample_steps: int = 20
    guidance: float = 3.0
    num_samples: int = 8
    sample_prompts: tuple[str, ...] = ()  # default: the captions of the first num_samples images
    lowres_size: int = 0  # > 0: a super-resolution stage fed the image downsampled to this size (+3 channels)
    lowres_noise: float = 0.5  # its noise augmentation: a level drawn per sample from U[0, this] (fraction of T);
    # a UNet with aug_level_embed is told the level (Imagen), others must cope with it unknown (GLIDE, CDM sec. 4.3)
    crop_size: int = 0  # > 0: train on random crops of this size (GLIDE's upsampler); samples stay full size
    inpaint: bool = False  # erase random regions; the mask and the erased image enter as 1 + C extra channels
    object_masks: float = 0.0  # inpaint: this fraction of samples erase one object's box, captioned by its name alone
    full_masks: float = 0.0  # inpaint: this fraction of samples erase the whole image, so the one network also
    # generates from text alone (given an all-ones mask): GLIDE's base and inpainting model trained as one
    freeze_text: bool = False  # keep the text encoder as init_from gave it (an inpainting UNet shares its system's)

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
        for key in ("p_uncond", "object_masks", "full_masks"):
            if not 0 <= getattr(self, key) <= 1:
                raise bad(key, getattr(self, key), "must be in [0, 1]")
        if self.gamma <= 0:
            raise bad("gamma", self.gamma, "must be > 0")
        if self.latent_scale < 0:
            raise bad("latent_scale", self.latent_scale, "must be > 0 (or 0: the autoencoder's own scaling_factor)")
        for key in ("lowres_size", "crop_size"):
            if getattr(self, key) < 0:
                raise bad(key, getattr(self, key), "must be >= 0 (0: off)")
        if not 0 <= self.lowres_noise <= 1:
            raise bad("lowres_noise", self.lowres_noise, "must be in [0, 1] (a fraction of the timesteps)")
        if (self.object_masks or self.full_masks) and not self.inpaint:
            raise bad("full_masks" if self.full_masks else "object_masks", self.full_masks or self.object_masks,
                      "erases regions for inpainting: set inpaint = true")
        if self.object_masks + self.full_masks > 1:
            raise bad("full_masks", self.full_masks, "plus object_masks must be at most 1")
        if self.first_stage and (self.lowres_size or self.crop_size):
            raise bad("first_stage", self.first_stage, "lowres_size and crop_size are for pixel stages")
        kinds = [k for k, kind in TEXT_ENCODERS.items() if not kind.needs_tokenizer] + ["none"]
        if self.text_encoder not in kinds:
            raise bad("text_encoder", self.text_encoder, f"must be one of {', '.join(kinds)}")

    # The stage configs an exported system saves, read from this table as they are (no translation).
    @property
    def schedule_config(self) -> ScheduleConfig:
        return ScheduleConfig.named(self.schedule, self.timesteps)

    @property
    def sampling_config(self) -> SamplingConfig:
        return SamplingConfig(sampler=self.sampler, steps=self.sample_steps, guidance=self.guidance,
                              spacing="leading", offset=0)

    @property
    def text_config(self) -> TextConfig:
        return TextConfig(kind=self.text_encoder, encoder=self.text, context_mask=True, pooled=self.pooled)

    @property
    def has_extra_inputs(self) -> bool:
        """Image conditioning enters the network as extra input channels (`ConcatInputs`)."""
        return bool(self.lowres_size) or self.inpaint

    def extra_channels(self, channels: int = 3) -> int:
        """Channels concatenated to the input of a network over `channels`-channel samples: low-res image (3),
        mask + erased image (1 + channels)."""
        return 3 * bool(self.lowres_size) + (1 + channels) * self.inpaint


# --- text encoders ---------------------------------------------------------------------------------


def build_text_encoder(options: DiffusionOptions, tokenizer_json: str | None = None) -> nn.Module | None:
    """The recipe's text encoder through the one registry (`t2i.encoders.registry`); None when unconditional.
    A word encoder starts from ShapesWorld's tokenizer unless one is given (resuming, init_from)."""
    from t2i.encoders import WordTokenizer
    from t2i.encoders.registry import build_text_encoder as build

    if options.text_encoder == "none":
        return None
    tokenizer = WordTokenizer.from_json(tokenizer_json) if tokenizer_json and options.text_encoder == "word" else None
    try:
        return build(options.text_config, tokenizer)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"[diffusion.text]: {e}") from None
    except (ImportError, FileNotFoundError) as e:
        raise RecipeError(f"[diffusion] text_encoder = '{options.text_encoder}': {e}") from None


# --- the frozen first stage ------------------------------------------------------------------------


def load_first_stage(path: str | Path, device: torch.device | str, latent_scale: float = 0.0) -> nn.Module:
    """The EMA autoencoder of an autoencoder run (its newest good checkpoint) or checkpoint folder, frozen;
    a latent_scale > 0 replaces its scaling_factor (LDM sec. 4.3.2: latents scaled to unit variance)."""
    from t2i.io.weights import load_into
    from t2i.train.checkpoint import latest_checkpoint, read_checkpoint
    from t2i.train.stages.autoencoder import build_autoencoder

    folder = system_folder(path)
    if folder is not None:  # a t2i system folder (or a shipped system's name): its autoencoder
        return _system_autoencoder(folder, latent_scale).to(device).eval().requires_grad_(False)
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


def _system_meta(folder: Path, key: str) -> dict[str, Any]:
    meta = json.loads((folder / "system.json").read_text())
    config = meta.get("config", {})
    if key not in config:
        raise RecipeError(f"[diffusion] {folder}: a '{meta.get('system')}' system folder has no {key}")
    return config


def _system_autoencoder(folder: Path, latent_scale: float) -> nn.Module:
    """The autoencoder of a t2i LDM system folder (float32), its scaling_factor replaced by latent_scale > 0."""
    from t2i.io.weights import load_into, load_sharded
    from t2i.train.stages.autoencoder import build_autoencoder

    net = dict(_system_meta(folder, "autoencoder")["autoencoder"])
    if latent_scale > 0:
        net["scaling_factor"] = latent_scale
    ae = build_autoencoder(net)
    load_into(ae, load_sharded(folder / "autoencoder.safetensors"), where=str(folder))
    return ae.float()


def init_folder(name_or_path: str) -> Path | None:
    """Where init_from's unet / text_encoder / tokenizer lie: a t2i system folder or a shipped system's, or one
    stage of a pixel cascade ("glide/base", a path to it, or the cascade alone for its first stage, base/)."""
    from t2i.io.weights import sharded_exists, shipped_weights

    folder = system_folder(name_or_path)
    places = [folder, folder / "base"] if folder is not None else [Path(name_or_path), shipped_weights(name_or_path)]
    return next((f for f in places if sharded_exists(f / "unet.safetensors")), None)


def init_from_system(model: nn.ModuleDict, name_or_path: str) -> None:
    """Start a stage's "net" and "text" from a t2i system folder's unet / text_encoder weights (fine-tuning)."""
    from t2i.io.weights import load_into, load_sharded, sharded_exists

    folder = init_folder(name_or_path)
    if folder is None:
        raise RecipeError(f"[diffusion] init_from = '{name_or_path}': neither a t2i system folder (system.json), "
                          "a shipped system nor a cascade stage's folder with a unet")
    parts = {"net": (lambda m: m, "unet.safetensors"), "text": (lambda m: m.transformer, "text_encoder.safetensors")}
    for key, (part, file) in parts.items():  # a system folder keeps the text encoder's transformer alone
        if key in model and sharded_exists(folder / file):
            try:
                own = part(model[key]).state_dict()
                state = add_position_encodings(widen_inputs(load_sharded(folder / file), own), own)
                load_into(part(model[key]), state, where=str(folder / file))
            except ValueError as e:
                raise RecipeError(f"[diffusion] init_from = '{name_or_path}': {e}") from None


def widen_inputs(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convolutions that take more input channels here than in `state` (an inpainting UNet started from a
    text-to-image one) get the saved weights for the first channels and zeros for the new ones, so the
    network starts as the one it came from (Stable Diffusion's inpainting model, Rombach et al. 2022)."""
    out = dict(state)
    for k, v in state.items():
        w = own.get(k)
        if w is not None and w.ndim == 4 == v.ndim and w.shape[1] > v.shape[1] and w.shape[::2] == v.shape[::2] \
                and w.shape[2:] == v.shape[2:]:
            out[k] = torch.cat([v, v.new_zeros((v.shape[0], w.shape[1] - v.shape[1], *v.shape[2:]))], dim=1)
    return out


def add_position_encodings(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pixel position encodings (UNetConfig.position_encoding) that `state` was saved without keep their zero
    initialisation, so a UNet that gains them starts as the one it came from."""
    new = {k: v for k, v in own.items() if ".position.proj." in k and k not in state}
    return {**state, **new}


def system_tokenizer(name_or_path: str) -> str | None:
    """The word tokenizer (tokenizer.json) of a t2i system folder, so token ids match its text encoder."""
    folder = init_folder(name_or_path)
    path = None if folder is None else folder / "tokenizer.json"
    return path.read_text() if path is not None and path.is_file() else None


# --- inpainting masks ------------------------------------------------------------------------------


def random_mask(generator: torch.Generator, size: int) -> torch.Tensor:
    """A (1, size, size) mask, 1 = erased: a random rectangle (half the time) or free-form brush strokes,
    a random walk of discs (GLIDE sec. 3.2 erases random regions; free-form as in Yu et al. 2019)."""
    u = lambda n: torch.rand(n, generator=generator)  # noqa: E731
    mask = torch.zeros(size, size)
    if float(u(1)) < 0.5:
        hw = (0.25 + 0.5 * u(2)) * size  # sides: 1/4 .. 3/4 of the image
        y0, x0 = (u(2) * (size - hw)).long().tolist()
        mask[y0:y0 + max(1, int(hw[0])), x0:x0 + max(1, int(hw[1]))] = 1
        return mask[None]
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for _ in range(1 + int(u(1) * 3)):  # 1..3 strokes
        point, radius = u(2) * size, (0.05 + 0.07 * float(u(1))) * size
        for _ in range(8):  # vertices of the stroke
            step = (u(2) - 0.5) * 0.4 * size
            for f in torch.linspace(0, 1, 4):  # discs along the segment
                c = (point + f * step).clamp(0, size - 1)
                mask[(yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= radius**2] = 1
            point = (point + step).clamp(0, size - 1)
    return mask[None]


def box_mask(box: tuple[float, float, float, float], size: int) -> torch.Tensor:
    """A (1, size, size) mask, 1 inside the box (x0, y0, x1, y1) given as fractions of the side."""
    x0, y0, x1, y1 = (min(max(round(v * size), 0), size) for v in box)
    mask = torch.zeros(1, size, size)
    mask[:, y0:y1, x0:x1] = 1
    return mask


# --- the stage -------------------------------------------------------------------------------------


@STAGES.register("diffusion")
class DiffusionStage:
    """Denoising loss on (latent) images with caption conditioning; CFG samples for the grid."""

    Options = DiffusionOptions

    def __init__(self, options: DiffusionOptions, examples: torch.Tensor, prompts: list[str],
                 device: torch.device, first_stage: nn.Module | None = None, tokenizer_json: str | None = None):
        from t2i.diffusion import ConcatInputs, DiscreteDenoiser

        self.options, self.device, self.first_stage = options, device, first_stage
        modules = {"net": build_network(options.network, options.net, "[diffusion.net]")}
        encoder = build_text_encoder(options, tokenizer_json)
        if encoder is not None:
            modules["text"] = encoder
        self.model = nn.ModuleDict(modules)
        if options.init_from:
            init_from_system(self.model, options.init_from)
        if options.freeze_text and encoder is not None:
            encoder.requires_grad_(False)
        self.model = self.model.to(device)
        schedule = options.schedule_config.build()
        net = ConcatInputs(self.model["net"]) if options.has_extra_inputs else self.model["net"]
        self.denoiser = DiscreteDenoiser(net, schedule, options.prediction)
        self.prompts = prompts
        self.examples = examples if options.has_extra_inputs else None  # the grid's low-res / masked inputs
        with torch.no_grad():
            self.sample_shape = tuple(self.encode_images(examples[:1].to(device), None).shape[1:])
        self.extra_channels = options.extra_channels(self.sample_shape[0])
        self._check_image_options()
        self._probe()

    def _check_image_options(self) -> None:
        """Sizes of the super-resolution / crop options against the data, and the network's input channels."""
        o, size = self.options, self.sample_shape[-1]
        for key in ("lowres_size", "crop_size"):
            if getattr(o, key) >= size:
                problem = bad(key, getattr(o, key), f"must be smaller than the {size} px images")
                raise RecipeError(f"[diffusion] {problem}")
        want = self.sample_shape[0] + self.extra_channels
        got = getattr(getattr(self.model["net"], "config", None), "in_channels", want)
        if got != want:
            parts = [f"{self.sample_shape[0]} image"] + (["3 low-res (lowres_size)"] if o.lowres_size else []) + (
                [f"{1 + self.sample_shape[0]} mask + erased image (inpaint)"] if o.inpaint else [])
            raise RecipeError(f"[diffusion.net] in_channels = {got}: must be {want} ({' + '.join(parts)} channels)")

    @classmethod
    def build(cls, recipe: Any, dataset: Any, device: torch.device,
              resume_from: Path | None = None) -> "DiffusionStage":
        """From a recipe; resuming reuses the checkpoint's tokenizer so token ids never shift."""
        o = recipe.options
        saved = resume_from / "tokenizer.json" if resume_from is not None else None
        tokenizer_json = saved.read_text() if saved is not None and saved.is_file() else None
        if tokenizer_json is None and o.init_from:
            tokenizer_json = system_tokenizer(o.init_from)
        examples, captions = first_examples(dataset, o.num_samples)
        prompts = list(o.sample_prompts) or captions
        first = load_first_stage(o.first_stage, device, o.latent_scale) if o.first_stage else None
        return cls(o, examples, prompts, device, first, tokenizer_json)

    def _probe(self) -> None:
        """Run the network once on one sample so a misfit (channels, context width) is a clear error."""
        x = torch.zeros((1, *self.sample_shape), device=self.device)
        cond = self.encode_text([""])
        if self.options.has_extra_inputs:
            cond["concat"] = x.new_zeros((1, self.extra_channels, *self.sample_shape[1:]))
            cond.update(self.aug_level(torch.zeros(1) if self.options.lowres_size else None))
        try:
            with torch.no_grad():
                self.denoiser(x, torch.ones(1, device=self.device), cond)
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
        captions, boxes = self.object_targets(batch, rng) if self.options.object_masks else (batch["caption"], None)
        captions = [c if k else "" for c, k in zip(captions, keep.tolist())]
        sigma = rng.each(lambda g: self.denoiser.sample_training_sigmas(1, g)).to(self.device)  # (B,)
        pixels = batch["image"].to(self.device)
        x0 = self.encode_images(pixels, rng)
        cond = self.encode_text(captions)
        if self.options.has_extra_inputs:  # drawn after the draws above, so other recipes draw as before
            t = self.lowres_level(rng) if self.options.lowres_size else None  # the first draw, as before
            x0, cond["concat"] = self.image_conditioning(x0, rng, t, None if self.first_stage is None else pixels, boxes)
            cond.update(self.aug_level(t))
        noise = rng.randn(tuple(x0.shape[1:])).to(self.device)  # (B, C, H, W)
        loss = diffusion_loss(self.denoiser, x0, cond, weighting=self.options.weighting,
                              gamma=self.options.gamma, sigma=sigma, noise=noise)
        return loss, {"loss": float(loss.detach())}

    def lowres_level(self, rng: SampleRNG) -> torch.Tensor:
        """Each sample's low-res augmentation level (B,) in timestep units, from U[0, lowres_noise] x (T - 1)."""
        return rng.rand() * self.options.lowres_noise * (self.denoiser.schedule.num_timesteps - 1)

    def aug_level(self, t: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """{"aug_level": t (B,)} when the network embeds the low-res augmentation level (Imagen), else {}."""
        embeds = getattr(getattr(self.model["net"], "config", None), "aug_level_embed", False)
        return {"aug_level": t.to(self.device)} if embeds and t is not None else {}

    def image_conditioning(self, images: torch.Tensor, rng: SampleRNG, t: torch.Tensor | None = None,
                           pixels: torch.Tensor | None = None, boxes: list | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training images (B, C, H, W) -> (target, extra channels): the low-res image noise-augmented at
        levels t (B,) (drawn by `lowres_level` when None), then the same random crop of both, then random
        regions erased for inpainting (in `pixels`, the latents' images, when the stage is over latents), or
        the sample's box (x0, y0, x1, y1) in fractions where `boxes` has one (`object_targets`)."""
        from t2i.diffusion.conditioning import lowres_condition

        o, (b, _, h, w) = self.options, images.shape
        parts = []
        if o.lowres_size:
            t = self.lowres_level(rng) if t is None else t  # (B,)
            low = F.interpolate(images, size=(o.lowres_size, o.lowres_size), mode="area")  # (B, 3, n, n)
            sigma = self.denoiser.schedule.t_to_sigma(t)
            parts.append(lowres_condition(low, (h, w), sigma, rng.randn(tuple(low.shape[1:]))))
        if o.crop_size:
            c = o.crop_size
            corners = rng.each(lambda g: torch.randint(0, min(h, w) - c + 1, (2,), generator=g)).view(b, 2)
            crop = lambda x: torch.stack([x[i, :, y:y + c, z:z + c] for i, (y, z) in enumerate(corners.tolist())])
            images, parts = crop(images), [crop(p) for p in parts]
        if o.inpaint:
            source = images if pixels is None else pixels
            boxes = boxes or [None] * len(rng)
            mask = torch.stack([random_mask(g, source.shape[-1]) if box is None else box_mask(box, source.shape[-1])
                                for g, box in zip(rng.generators, boxes)]).to(source)  # (B, 1, H, W)
            if o.full_masks:  # drawn only when asked, so other recipes' random streams stay as they were
                full = (rng.rand() < o.full_masks) & torch.tensor([box is None for box in boxes])
                mask[full.to(mask.device)] = 1
            parts.append(self.inpaint_inputs(source, mask))
        return images, torch.cat(parts, dim=1)

    def object_targets(self, batch: dict[str, Any], rng: SampleRNG) -> tuple[list[str], list]:
        """Edits as users ask them (GLIDE sec. 4): with probability `object_masks` a sample erases a box around
        one of its scene's objects (1.2-1.8 radii from its centre) and is captioned by that object alone
        ("a red circle"); the others keep a random mask and their caption. -> (captions, boxes or None)."""
        pick, which, scale = rng.rand(), rng.rand(), rng.rand()  # (B,) each
        captions, boxes = list(batch["caption"]), [None] * len(batch["caption"])
        for i, objects in enumerate(batch.get("objects") or [[]] * len(captions)):
            if objects and pick[i] < self.options.object_masks:
                o = objects[int(which[i] * len(objects))]
                (x, y), h = o["center"], (1.2 + 0.6 * float(scale[i])) * o["r"]
                boxes[i] = (x - h, y - h, x + h, y + h)
                captions[i] = f"{'an' if o['color'][0] in 'aeiou' else 'a'} {o['color']} {o['shape']}"
        return captions, boxes

    def inpaint_inputs(self, pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """An inpainting network's extra channels from pixels (B, 3, H, W) and a mask (B, 1, H, W), 1 = repaint:
        the mask and the erased image (GLIDE sec. 3.2), or over latents the mask resized to them (nearest) and
        the erased image's latents, as `LDM.run` builds them (Stable Diffusion's inpainting model)."""
        from t2i.diffusion.conditioning import inpaint_condition

        if self.first_stage is None:
            return inpaint_condition(pixels, mask)
        latents = self.encode_images(pixels * (1 - mask), None)
        return torch.cat([F.interpolate(mask, size=latents.shape[-2:]), latents], dim=1)

    def grid_conditioning(self, n: int) -> torch.Tensor:
        """Extra channels for n grid samples from the first examples: their low-res image at the
        lowest augmentation level, and/or the centre square erased (everything, in the first half, with
        `full_masks`)."""
        from t2i.diffusion.conditioning import lowres_condition

        o = self.options
        images = self.examples[torch.arange(n) % len(self.examples)].to(self.device)  # (n, 3, H, W)
        size = images.shape[-2:]
        parts = []
        if o.lowres_size:
            low = F.interpolate(images, size=(o.lowres_size, o.lowres_size), mode="area")
            parts.append(lowres_condition(low, size, torch.zeros(n), torch.zeros_like(low)))
        if o.inpaint:
            mask = torch.zeros((n, 1, *size), device=self.device)
            mask[..., size[0] // 4:3 * size[0] // 4, size[1] // 4:3 * size[1] // 4] = 1
            if o.full_masks:  # the first half of the grid from text alone, as the model is used most
                mask[: (n + 1) // 2] = 1
            parts.append(self.inpaint_inputs(images, mask))
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def generate(self, prompts: list[str], generator: torch.Generator, steps: int | None = None,
                 guidance: float | None = None) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] for prompts, with classifier-free guidance when text-conditioned:
        the stage sampler every system uses (`t2i.systems.stage`)."""
        from t2i.systems.stage import Guidance, StageRun, guided, sample_stage

        o = self.options
        cond = self.encode_text(prompts)
        scale = o.guidance if guidance is None else guidance
        uncond = self.encode_text([""] * len(prompts)) if cond and scale != 1.0 else None
        extra = None  # the grid's low-res images at the lowest augmentation level
        if o.has_extra_inputs:
            level = torch.zeros(len(prompts)) if o.lowres_size else None
            extra = {"concat": self.grid_conditioning(len(prompts)), **self.aug_level(level)}
        den = guided(self.denoiser, Guidance(scale, uncond), extra)
        settings = dataclasses.replace(o.sampling_config, steps=steps or o.sample_steps)
        x = sample_stage(den, StageRun((len(prompts), *self.sample_shape), settings, cond or None,
                                       device=self.device), generator)
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
