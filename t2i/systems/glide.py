"""GLIDE (Nichol et al. 2022): pixel-space text-to-image. A text transformer trained with the model
conditions a 64 px ADM UNet twice: its final token's state replaces the class embedding (`pooled`),
its token states are concatenated to every attention layer's keys and values (attention_block =
"adm"). An optional upsampler stage (64 -> 256 px) takes the base image, noise-augmented, as extra
input channels; an inpainting model takes the mask and the masked image the same way. Guidance is
classifier-free by default, or the gradient of an external log-probability (noisy CLIP, a
noise-aware classifier; `t2i.systems.guides`), which a system folder keeps in guide_clip/ and guide_classifier/.

Composition only: the math is `t2i.diffusion`, the networks `t2i.nn`, the encoders `t2i.encoders`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from PIL import Image
from torch import nn

from t2i.diffusion import (ClassifierFreeGuidance, ConcatInputs, DiscreteDenoiser, GradientGuidance, StaticThreshold,
                           sample)
from t2i.diffusion.conditioning import inpaint_condition, lowres_condition
from t2i.diffusion.guidance import LogProb
from t2i.diffusion.samplers import randn
from t2i.nn.unet import UNet, UNetConfig
from t2i.systems.base import (SamplingConfig, ScheduleConfig, StepBar, TextConfig, _check_fields, build_text_encoder,
                              encode_prompts, image_to_tensor, labelled_images, load_module, load_text_encoder,
                              mask_blend, mask_to_tensor, read_system_json, read_tokenizer, save_module,
                              save_text_encoder, write_system_json)
from t2i.systems.guides import Guide, guide_folder, load_guide

FORMAT = 1  # version of the t2i GLIDE folder layout written by `save`
GUIDANCE_TYPES = ("cfg", "clip", "classifier")


@dataclass(frozen=True)
class GLIDEStageConfig:
    """One stage of the cascade: its UNet, its own text encoder, schedule and sampling defaults."""

    unet: UNetConfig = UNetConfig(in_channels=3, out_channels=3, block_channels=(64, 128, 256),
                                  attention_levels=(1, 2), attention_block="adm", num_heads=None, head_dim=64,
                                  context_dim=128, pooled_dim=128, scale_shift=True)
    text: TextConfig = TextConfig(kind="word", encoder={"width": 128}, pooled=True)
    schedule: ScheduleConfig = ScheduleConfig(name="cosine")
    prediction: str = "eps"  # eps | v | x0
    sampling: SamplingConfig = SamplingConfig(sampler="ddim", steps=50, guidance=3.0, spacing="linspace", offset=0)
    sample_size: int = 64  # image side in pixels
    lowres_size: int = 0  # > 0: a super-resolution stage fed the previous stage's image of this size
    lowres_noise: float = 0.0  # its noise augmentation at sampling time, a fraction of the timesteps
    inpaint: bool = False  # the UNet takes the mask and the masked image as 4 extra input channels

    def __post_init__(self) -> None:
        want = 3 + 3 * bool(self.lowres_size) + 4 * self.inpaint
        if self.unet.out_channels != 3 or self.unet.in_channels != want:
            raise ValueError(f"a UNet with {self.unet.in_channels} -> {self.unet.out_channels} channels does not "
                             f"fit this stage: in_channels must be {want} (3 + 3 low-res + 4 inpainting, as set), "
                             "out_channels 3")
        if not 0 <= self.lowres_noise < 1 or self.lowres_size >= self.sample_size:
            raise ValueError("lowres_noise must be in [0, 1) and lowres_size smaller than sample_size")

    @property
    def extra_channels(self) -> int:
        return self.unet.in_channels - 3

    def to_dict(self) -> dict[str, Any]:
        return {f.name: v.to_dict() if hasattr(v := getattr(self, f.name), "to_dict") else v
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GLIDEStageConfig":
        _check_fields(cls, d)
        parts = {"unet": UNetConfig, "text": TextConfig, "schedule": ScheduleConfig, "sampling": SamplingConfig}
        return cls(**{k: parts[k].from_dict(v) if k in parts else v for k, v in d.items()})


@dataclass(frozen=True)
class GLIDEConfig:
    """A base stage and an optional upsampler whose low-res input is the base image."""

    base: GLIDEStageConfig = GLIDEStageConfig()
    upsampler: GLIDEStageConfig | None = None

    def __post_init__(self) -> None:
        if self.base.lowres_size:
            raise ValueError("the base stage takes no low-res image (lowres_size = 0)")
        up = self.upsampler
        if up is not None and (up.lowres_size != self.base.sample_size or up.sample_size % up.lowres_size):
            raise ValueError(f"the upsampler must take the base's {self.base.sample_size} px images (lowres_size) "
                             f"and enlarge them by an integer factor (sample_size)")

    @property
    def factor(self) -> int:
        """How much the upsampler enlarges the base image (1 without one)."""
        return 1 if self.upsampler is None else self.upsampler.sample_size // self.upsampler.lowres_size

    @property
    def stages(self) -> list[GLIDEStageConfig]:
        return [self.base] + ([self.upsampler] if self.upsampler is not None else [])

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base.to_dict(), "upsampler": None if self.upsampler is None else self.upsampler.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GLIDEConfig":
        _check_fields(cls, d)
        up = d.get("upsampler")
        return cls(GLIDEStageConfig.from_dict(d.get("base", {})),
                   None if up is None else GLIDEStageConfig.from_dict(up))


class GLIDEStage(nn.Module):
    """A pixel UNet and its text encoder: prompts + image conditioning -> a guided denoiser."""

    def __init__(self, config: GLIDEStageConfig, unet: UNet, text_encoder: nn.Module):
        super().__init__()
        self.config, self.unet, self.text_encoder = config, unet, text_encoder
        self.schedule = config.schedule.build()

    @classmethod
    def build(cls, config: GLIDEStageConfig, tokenizer: Any) -> "GLIDEStage":
        return cls(config, UNet(config.unet), build_text_encoder(config.text, tokenizer))

    def encode_text(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        return encode_prompts(self.config.text, self.text_encoder, prompts)

    def lowres_sigma(self, batch: int) -> torch.Tensor:
        """The sampling-time noise augmentation of the low-res input, as sigmas (B,)."""
        t = torch.full((batch,), self.config.lowres_noise * (self.schedule.num_timesteps - 1))
        return self.schedule.t_to_sigma(t)

    def denoiser(self, cond: dict[str, torch.Tensor], uncond: dict[str, torch.Tensor] | None, guidance: float,
                 guide: LogProb | None, extra: torch.Tensor | None) -> Callable:
        """DiscreteDenoiser over the UNet (behind ConcatInputs when there are extra channels), wrapped in
        classifier-free guidance (uncond given) or gradient guidance (guide given); cond gets `concat`."""
        net: Callable = self.unet
        if extra is not None:
            net = ConcatInputs(self.unet)
            cond["concat"] = extra
            if uncond is not None:
                uncond["concat"] = extra
        den: Callable = DiscreteDenoiser(net, self.schedule, self.config.prediction)
        if guide is not None:
            den = GradientGuidance(den, guide, guidance)
        elif uncond is not None:
            den = ClassifierFreeGuidance(den, guidance, uncond)
        if self.config.sampling.clip_sample > 0:
            den = StaticThreshold(den, self.config.sampling.clip_sample)
        return den


class GLIDE(nn.Module):
    """GLIDE: `generate(prompt, ...)` -> PIL images from the base stage, enlarged by the upsampler if any."""

    guidance_types = GUIDANCE_TYPES  # what `guidance_type` accepts (systems without it: classifier-free only)

    def __init__(self, config: GLIDEConfig, base: GLIDEStage, upsampler: GLIDEStage | None = None,
                 name: str = "glide"):
        super().__init__()
        self.config, self.name, self.base, self.upsampler = config, name, base, upsampler
        self.folder: Path | None = None  # the folder `load` read, where guide_clip/ and guide_classifier/ are found

    @classmethod
    def build(cls, config: GLIDEConfig, tokenizer: Any, upsampler_tokenizer: Any = None,
              name: str = "glide") -> "GLIDE":
        """A freshly initialised system; the upsampler's tokenizer defaults to the base's."""
        up = None if config.upsampler is None else GLIDEStage.build(config.upsampler, upsampler_tokenizer or tokenizer)
        return cls(config, GLIDEStage.build(config.base, tokenizer), up, name)

    @property
    def stages(self) -> list[GLIDEStage]:
        return [self.base] + ([self.upsampler] if self.upsampler is not None else [])

    @property
    def device(self) -> torch.device:
        return next(self.base.unet.parameters()).device

    # --- sampling -----------------------------------------------------------------------------------

    def resolve_guide(self, guidance_type: str, guide: Guide | LogProb | str | Path | None) -> Guide | LogProb | None:
        """The guide of a guidance type: None for "cfg"; else `guide` (a Guide, a guide folder, or a log-probability
        callable (x, sigma, cond) -> (B,)), by default the folder's guide_<type>/. A loaded Guide is moved to
        the system's device. Raises ValueError naming the expected folder when there is none."""
        if guidance_type not in GUIDANCE_TYPES:
            raise ValueError(f"unknown guidance type {guidance_type!r}; choose from {', '.join(GUIDANCE_TYPES)}")
        if guidance_type == "cfg":
            if guide is not None:
                raise ValueError("guidance_type 'cfg' (classifier-free) takes no guide; give guidance_type "
                                 "'clip' or 'classifier' with it")
            return None
        if guide is None:
            if self.folder is None:
                raise ValueError(f"guidance_type {guidance_type!r} needs guide= (a guide, its folder or a callable "
                                 f"(x, sigma, cond) -> (B,)) or --guide PATH: this system was not loaded from a "
                                 f"folder with guide_{guidance_type}/")
            guide = guide_folder(self.folder, guidance_type)
            if not guide.is_dir():
                raise ValueError(f"no {guidance_type} guide: {guide} does not exist; write one there with "
                                 f"`t2i convert RUN {guide}` or give one (guide=, --guide PATH)")
        if isinstance(guide, (str, Path)):
            guide = load_guide(guide, guidance_type)
        if isinstance(guide, Guide):
            if guide.kind != guidance_type:
                raise ValueError(f"a {guide.kind} guide cannot give {guidance_type} guidance")
            return guide.to(self.device)
        if not callable(guide):
            raise ValueError(f"guide must be a Guide, a guide folder or a callable (x, sigma, cond) -> (B,), "
                             f"not {type(guide).__name__}")
        return guide

    @torch.no_grad()
    def sample(self, prompt: str | list[str], *, negative_prompt: str = "", num_images: int = 1, seed: int = 0,
               steps: int | None = None, sampler: str | None = None, guidance: float | None = None,
               width: int | None = None, height: int | None = None, image: Image.Image | None = None,
               mask: Image.Image | None = None, strength: float = 1.0, guidance_type: str = "cfg",
               guide: Guide | LogProb | str | Path | None = None,
               progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1], B = prompts x num_images, all noise from one CPU generator
        seeded with `seed`. width / height are the final size (the upsampler's output when there is one).
        `image` alone: img2img at `strength`; with `mask` (white = repaint): inpainting, the kept region
        blended in after every step of every stage. `steps`, `sampler`, `guidance`, `guidance_type` and
        `guide` apply to the base stage; the upsampler samples with its own settings.
        guidance_type "clip" / "classifier": D + guidance * sigma^2 grad log p(prompt | x_t) instead of
        classifier-free guidance, from `guide` (`resolve_guide`: a Guide or guide folder, whose log_prob is
        built for each image's prompt, or a callable (x, sigma, cond) -> (B,); default the folder's
        guide_<type>/)."""
        cfg = self.config
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError("the prompt is empty: give the text to draw")
        guide = self.resolve_guide(guidance_type, guide)
        if mask is not None and image is None:
            raise ValueError("inpainting needs an init image as well as a mask")
        if mask is not None and mask.size != image.size:
            raise ValueError(f"the mask is {mask.size[0]}x{mask.size[1]} px but the image is "
                             f"{image.size[0]}x{image.size[1]}: they must be the same size")
        if cfg.base.inpaint and mask is None:
            raise ValueError("this is an inpainting model: give an init image and a mask")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        final = cfg.stages[-1].sample_size
        width, height = width or (image.size[0] if image else final), height or (image.size[1] if image else final)
        m = cfg.factor * 2 ** (len(cfg.base.unet.block_channels) - 1)
        if width < m or height < m or width % m or height % m:
            raise ValueError(f"this model makes images whose sides are multiples of {m} px; got {width}x{height}")

        batch = [p for p in prompts for _ in range(num_images)]
        generator = torch.Generator().manual_seed(seed)
        base_size = (height // cfg.factor, width // cfg.factor)
        if isinstance(guide, Guide):
            if base_size != (guide.image_size, guide.image_size):
                raise ValueError(f"the {guide.kind} guide sees {guide.image_size} px images but the base stage "
                                 f"samples {base_size[1]}x{base_size[0]} px")
            guide = guide.log_prob(batch)
        settings = dataclasses.replace(cfg.base.sampling, **{k: v for k, v in (("sampler", sampler), ("steps", steps))
                                                             if v is not None})
        scale = cfg.base.sampling.guidance if guidance is None else guidance
        x = self._sample_stage(self.base, settings, batch, negative_prompt, scale, guide, generator, base_size,
                               image, mask, strength, None, progress)
        if self.upsampler is not None:
            up = cfg.upsampler
            x = self._sample_stage(self.upsampler, up.sampling, batch, negative_prompt, up.sampling.guidance, None,
                                   generator, (height, width), image if mask is not None else None, mask, 1.0, x,
                                   progress)
        return (x / 2 + 0.5).clamp(0, 1).float().cpu()

    def _sample_stage(self, stage: GLIDEStage, settings: SamplingConfig, batch: list[str], negative_prompt: str,
                      guidance: float, guide: LogProb | None, generator: torch.Generator, size: tuple[int, int],
                      image: Image.Image | None, mask: Image.Image | None, strength: float,
                      lowres: torch.Tensor | None, progress: Callable[[int], None] | None) -> torch.Tensor:
        """One stage's images (B, 3, H, W) in [-1, 1]."""
        device, dtype = self.device, next(stage.unet.parameters()).dtype
        shape = (len(batch), 3, *size)
        cond = stage.encode_text(batch)
        uncond = stage.encode_text([negative_prompt] * len(batch)) if guide is None and guidance != 1.0 else None
        sigmas = settings.sigmas(stage.schedule, settings.steps)
        if image is not None:  # diffusers' get_timesteps: skip the first steps - int(steps * strength)
            sigmas = sigmas[settings.steps - min(int(settings.steps * strength), settings.steps):]
            if len(sigmas) < 2:
                raise ValueError(f"strength {strength} with {settings.steps} steps leaves no step to run")
        pixels = None if image is None else image_to_tensor(image, size[::-1]).to(device, dtype).expand(shape)
        repaint = None if mask is None else mask_to_tensor(mask.resize(size[::-1], Image.NEAREST)).to(device, dtype)

        parts = []
        if lowres is not None:  # the previous stage's image, noise-augmented and enlarged
            sigma = stage.lowres_sigma(len(batch))
            noise = randn(lowres.shape, lowres, generator)
            parts.append(lowres_condition(lowres.to(device, dtype), size, sigma, noise))
        if stage.config.inpaint:
            parts.append(inpaint_condition(pixels, repaint.expand(len(batch), -1, -1, -1)))
        extra = torch.cat(parts, dim=1) if parts else None
        denoiser = stage.denoiser(cond, uncond, guidance, guide, extra)

        noise = randn(shape, torch.empty((), device=device, dtype=dtype), generator)
        sigma0 = float(sigmas[0])
        fresh = pixels is None or (mask is not None and strength == 1)
        x_T = noise * settings.noise_scale(sigma0) if fresh else pixels + noise * sigma0
        blend = None if mask is None else mask_blend(repaint, pixels, noise, sigmas)

        def callback(i: int, x: torch.Tensor, x0: torch.Tensor, sigma: float) -> None:
            if blend is not None:
                blend(i, x)
            if progress is not None:
                progress(i)

        options = {"eta": settings.eta} if settings.sampler == "ddim" else {}
        x = sample(denoiser, shape, sampler=settings.sampler, sigmas=sigmas, cond=cond, generator=generator, x_T=x_T,
                   device=device, dtype=dtype, callback=callback, **options)
        return x / math.sqrt(1 + float(sigmas[-1]) ** 2)  # the VP sample

    def generate(self, prompt: str | list[str], *, negative_prompt: str = "", num_images: int = 1, seed: int = 0,
                 steps: int | None = None, sampler: str | None = None, guidance: float | None = None,
                 width: int | None = None, height: int | None = None, image: Image.Image | None = None,
                 mask: Image.Image | None = None, strength: float = 1.0, guidance_type: str = "cfg",
                 guide: Guide | LogProb | str | Path | None = None, progress: bool = False) -> list[Image.Image]:
        """PIL images; each carries its generation parameters in `.info` (written by `save_png`).
        guidance_type "clip" / "classifier" takes `guide` or the folder's guide_<type>/ (`sample`)."""
        base = self.config.base.sampling
        guide = self.resolve_guide(guidance_type, guide)
        steps = steps or base.steps
        total = min(int(steps * strength), steps) if image is not None else steps
        bar = StepBar(total + (self.config.upsampler.sampling.steps if self.upsampler is not None else 0))
        try:
            x = self.sample(prompt, negative_prompt=negative_prompt, num_images=num_images, seed=seed, steps=steps,
                            sampler=sampler, guidance=guidance, width=width, height=height, image=image, mask=mask,
                            strength=strength, guidance_type=guidance_type, guide=guide,
                            progress=bar if progress else None)
        finally:
            bar.close()
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        meta = {"negative_prompt": negative_prompt, "seed": str(seed), "sampler": sampler or base.sampler,
                "steps": str(steps), "model": self.name, "guidance_type": guidance_type,
                "guidance": str(base.guidance if guidance is None else guidance)}
        if isinstance(guide, Guide):
            meta["guide"] = guide.name
        if image is not None:
            meta.update(mode="inpaint" if mask is not None else "img2img", strength=str(strength))
        return labelled_images(x, prompts, num_images, meta)

    # --- the t2i folder: system.json, base/ and upsampler/ (unet, text encoder, tokenizer) ------------

    def save(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write the t2i system folder; floating tensors cast to `dtype` when given (loading casts back).
        The guides of the folder this system was loaded from (guide_clip/, guide_classifier/) go along."""
        folder = Path(folder)
        for part, stage in zip(("base", "upsampler"), self.stages):
            (folder / part).mkdir(parents=True, exist_ok=True)
            save_module(stage.unet, folder / part / "unet.safetensors", dtype)
            save_text_encoder(stage.config.text, stage.text_encoder, folder / part, dtype)
        write_system_json(folder, "glide", FORMAT, self.name, self.config)
        for kind in GUIDANCE_TYPES[1:]:
            source = None if self.folder is None else guide_folder(self.folder, kind)
            if source is not None and source.is_dir() and source.resolve() != guide_folder(folder, kind).resolve():
                load_guide(source, kind).save(guide_folder(folder, kind), dtype)
        return folder

    @classmethod
    def load(cls, folder: str | Path, name: str | None = None) -> "GLIDE":
        """Read a folder written by `save`."""
        folder = Path(folder)
        meta = read_system_json(folder, "glide", FORMAT)
        config = GLIDEConfig.from_dict(meta["config"])
        stages = [GLIDEStage.build(c, read_tokenizer(c.text, folder / part))
                  for part, c in zip(("base", "upsampler"), config.stages)]
        for part, stage in zip(("base", "upsampler"), stages):
            load_module(stage.unet, folder / part / "unet.safetensors")
            load_text_encoder(stage.config.text, stage.text_encoder, folder / part)
        system = cls(config, *stages, name=name or meta.get("name", "glide")).eval()
        system.folder = folder
        return system
