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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from PIL import Image
from torch import nn

from t2i.diffusion import ConcatInputs, DiscreteDenoiser
from t2i.diffusion.conditioning import inpaint_condition, lowres_condition
from t2i.diffusion.config import SamplingConfig, ScheduleConfig, check_fields
from t2i.diffusion.guidance import LogProb
from t2i.diffusion.samplers import randn
from t2i.io.images import image_to_tensor, mask_to_tensor
from t2i.nn.unet import UNet, UNetConfig
from t2i.systems.base import (TextConfig, build_text_encoder, encode_prompts, load_module, load_text_encoder,
                              read_system_json, read_tokenizer, save_module, save_text_encoder, write_system_json)
from t2i.systems.guides import Guide, guide_folder, load_guide
from t2i.systems.request import GUIDANCE_TYPES, GenerationRequest
from t2i.systems.stage import Guidance, StageRun, default_threshold, guided, sample_stage
from t2i.systems.system import SystemBase, register

FORMAT = 1  # version of the t2i GLIDE folder layout written by `save`


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
        check_fields(cls, d)
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
        check_fields(cls, d)
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


@dataclass
class StagePlan:
    """What one GLIDE stage samples: its settings, guidance, size (H, W), init image / mask and low-res input."""

    settings: SamplingConfig
    scale: float
    log_prob: LogProb | None
    size: tuple[int, int]
    strength: float = 1.0
    image: Image.Image | None = None
    lowres: torch.Tensor | None = None


@register("glide")
class GLIDE(SystemBase):
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

    @classmethod
    def tiny(cls, seed: int = 0) -> "GLIDE":
        """A tiny random base (16 px) + 2x upsampler, for contract tests."""
        from t2i.encoders import WordTokenizer

        torch.manual_seed(seed)
        unet = dict(out_channels=3, block_channels=(16, 32), num_res_blocks=1, attention_levels=(1,),
                    attention_block="adm", num_heads=2, head_dim=None, context_dim=32, pooled_dim=32, norm_groups=8)
        stage = dict(text=TextConfig(encoder=dict(width=32, layers=1, heads=4, max_length=12), pooled=True),
                     sampling=SamplingConfig(sampler="ddim", steps=3, guidance=3.0, spacing="linspace", offset=0))
        config = GLIDEConfig(GLIDEStageConfig(unet=UNetConfig(in_channels=3, **unet), sample_size=16, **stage),
                             GLIDEStageConfig(unet=UNetConfig(in_channels=6, **unet), sample_size=32, lowres_size=16,
                                              lowres_noise=0.1, **stage))
        return cls.build(config, WordTokenizer.for_shapes(), name="tiny-glide")

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(("inpaint",) if self.config.base.inpaint else ("txt2img", "img2img", "inpaint"))

    def unsupported(self, capability: str) -> str:
        if self.config.base.inpaint:
            return "this is an inpainting model: give an init image and a mask"
        return super().unsupported(capability)

    def check(self, request: GenerationRequest) -> GenerationRequest:
        """The capability check, and the request's guide resolved (`resolve_guide`)."""
        guide = self.resolve_guide(request.guidance_type, request.guide)
        return super().check(dataclasses.replace(request, guide=guide) if guide is not request.guide else request)

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

    def settings(self, r: GenerationRequest) -> tuple[str, int, float]:
        s = self.config.base.sampling
        return (s.sampler if r.sampler is None else r.sampler, s.steps if r.steps is None else r.steps,
                s.guidance if r.guidance is None else r.guidance)

    def total_steps(self, r: GenerationRequest) -> int:
        steps = self.settings(r)[1]
        base = min(int(steps * r.strength), steps) if r.image is not None else steps
        return base + sum(c.sampling.steps for c in self.config.stages[1:])

    def extra_metadata(self, r: GenerationRequest) -> dict[str, str]:
        meta = {"guidance_type": r.guidance_type}
        if isinstance(r.guide, Guide):
            meta["guide"] = r.guide.name
        return meta

    def run(self, r: GenerationRequest, progress: Callable[[int], None] | None) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1]; width / height are the final size. The request's steps, sampler,
        guidance and guide apply to the base stage; later stages sample with their own settings, each fed
        the previous stage's image. With a mask, the kept region is blended in at every stage."""
        cfg = self.config
        width, height = r.size(cfg.stages[-1].sample_size)
        m = cfg.factor * 2 ** (len(cfg.base.unet.block_channels) - 1)
        if width < m or height < m or width % m or height % m:
            raise ValueError(f"this model makes images whose sides are multiples of {m} px; got {width}x{height}")
        generator, guide = torch.Generator().manual_seed(r.seed), r.guide
        base_size = (height // cfg.factor, width // cfg.factor)
        if isinstance(guide, Guide):
            if base_size != (guide.image_size, guide.image_size):
                raise ValueError(f"the {guide.kind} guide sees {guide.image_size} px images but the base stage "
                                 f"samples {base_size[1]}x{base_size[0]} px")
            guide = guide.log_prob(r.batch)
        sampler, steps, scale = self.settings(r)
        plan = StagePlan(dataclasses.replace(cfg.base.sampling, sampler=sampler, steps=steps), scale, guide,
                         base_size, r.strength if r.image is not None else 1.0, r.image)
        x = None
        for stage in self.stages:
            if x is not None:  # a later stage: its own settings, the whole image size, the previous image
                s = stage.config.sampling
                plan = StagePlan(s, s.guidance, None, (height, width), 1.0, r.image if r.mask else None, x)
            x = self._sample_stage(stage, r, plan, generator, progress)
        return (x / 2 + 0.5).clamp(0, 1).float().cpu()

    def _sample_stage(self, stage: GLIDEStage, r: GenerationRequest, plan: StagePlan, generator: torch.Generator,
                      progress: Callable[[int], None] | None) -> torch.Tensor:
        """One stage's images (B, 3, H, W) in [-1, 1]."""
        device, dtype = self.device, next(stage.unet.parameters()).dtype
        batch, size = r.batch, plan.size
        shape = (len(batch), 3, *size)
        cond = stage.encode_text(batch)
        use_cfg = plan.log_prob is None and plan.scale != 1.0
        uncond = stage.encode_text([r.negative_prompt] * len(batch)) if use_cfg else None
        pixels = None if plan.image is None else image_to_tensor(plan.image, size[::-1]).to(device, dtype).expand(shape)
        repaint = None if r.mask is None else mask_to_tensor(r.mask.resize(size[::-1], Image.NEAREST)).to(device, dtype)
        parts = []
        if plan.lowres is not None:  # the previous stage's image, noise-augmented and enlarged
            noise = randn(plan.lowres.shape, plan.lowres, generator)
            parts.append(lowres_condition(plan.lowres.to(device, dtype), size, stage.lowres_sigma(len(batch)), noise))
        if stage.config.inpaint:
            parts.append(inpaint_condition(pixels, repaint.expand(len(batch), -1, -1, -1)))
        net = ConcatInputs(stage.unet) if parts else stage.unet
        guidance = Guidance(plan.scale, uncond, plan.log_prob, default_threshold(plan.settings, r.threshold))
        denoiser = guided(DiscreteDenoiser(net, stage.schedule, stage.config.prediction), guidance,
                          {"concat": torch.cat(parts, dim=1)} if parts else None)
        fresh = pixels is None or (r.mask is not None and plan.strength == 1)
        run = StageRun(shape, plan.settings, cond, plan.strength, init=None if fresh else pixels, known=pixels,
                       repaint=repaint, progress=progress, device=device, dtype=dtype)
        return sample_stage(denoiser, run, generator)

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
