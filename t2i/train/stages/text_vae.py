"""The text_vae stage: the Optimus-style text VAE of Versatile Diffusion's text flows (Li et al. 2020; Xu et al.
2023 sec. 3.4) trained on ShapesWorld captions with the negative ELBO (token cross-entropy + beta KL)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from torch import nn

from t2i.train.config import RecipeError, TableConfig, bad
from t2i.train.registry import STAGES
from t2i.train.rng import SampleRNG
from t2i.train.stages.base import first_examples


@dataclass(frozen=True)
class TextVAEOptions(TableConfig):
    """[text_vae]: the TextVAEConfig fields (`net`, vocab_size set by the tokenizer), the KL weight, the samples."""

    net: dict = field(default_factory=dict)  # TextVAEConfig fields (t2i/nn/text_vae.py) but vocab_size
    beta: float = 1e-3  # KL weight: small, so z keeps every word (Optimus' low-beta regime)
    num_samples: int = 8  # captions reconstructed in each sample

    def check(self) -> None:
        if self.beta < 0:
            raise bad("beta", self.beta, "must be >= 0")
        if self.num_samples < 1:
            raise bad("num_samples", self.num_samples, "must be at least 1")
        if "vocab_size" in self.net:
            raise bad("net.vocab_size", self.net["vocab_size"], "is set by the tokenizer")


def build_text_vae(options: TextVAEOptions, tokenizer_json: str | None = None) -> tuple[nn.Module, Any]:
    """A TextVAE from the [text_vae] table and its word tokenizer (ShapesWorld's, or a saved one)."""
    from t2i.encoders.tokenizer import WordTokenizer
    from t2i.nn.text_vae import TextVAE, TextVAEConfig

    tok = WordTokenizer.from_json(tokenizer_json) if tokenizer_json else WordTokenizer.for_shapes()
    try:
        return TextVAE(TextVAEConfig.from_dict({**options.net, "vocab_size": len(tok)})), tok
    except (TypeError, ValueError) as e:
        raise RecipeError(f"[text_vae.net]: {e}") from None


def text_image(lines: list[str], width: int = 640) -> Image.Image:
    """Lines of text drawn black on white (PIL's default font): a text stage's 'sample grid'."""
    image = Image.new("RGB", (width, 14 * len(lines) + 8), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((4, 4 + 14 * i), line, fill="black")
    return image


@STAGES.register("text_vae")
class TextVAEStage:
    """Caption -> z -> caption; the sample shows each caption over its greedy reconstruction."""

    Options = TextVAEOptions

    def __init__(self, options: TextVAEOptions, captions: list[str], device: torch.device,
                 tokenizer_json: str | None = None):
        self.options, self.device, self.captions = options, device, captions
        vae, self.tokenizer = build_text_vae(options, tokenizer_json)
        self.model = nn.ModuleDict({"text_vae": vae}).to(device)

    @classmethod
    def build(cls, recipe: Any, dataset: Any, device: torch.device, resume_from: Path | None = None) -> "TextVAEStage":
        """From a recipe; resuming reuses the checkpoint's tokenizer so token ids never shift."""
        saved = resume_from / "tokenizer.json" if resume_from is not None else None
        tokenizer_json = saved.read_text() if saved is not None and saved.is_file() else None
        return cls(recipe.options, first_examples(dataset, recipe.options.num_samples)[1], device, tokenizer_json)

    def loss(self, batch: dict[str, Any], rng: SampleRNG) -> tuple[torch.Tensor, dict[str, float]]:
        vae = self.model["text_vae"]
        ids, mask = self.tokenizer.encode(batch["caption"], vae.config.max_length)
        loss, logs = vae.loss(ids.to(self.device), mask.to(self.device), self.options.beta, rng.batch_generator())
        return loss, {"loss": float(loss.detach()), **logs}

    @torch.no_grad()
    def sample_grid(self, generator: torch.Generator) -> Image.Image:
        """Each caption ('>') over its reconstruction from the posterior mean ('<'), as an image of text."""
        vae = self.model["text_vae"]
        ids, mask = self.tokenizer.encode(self.captions, vae.config.max_length)
        out = vae.generate(vae.encode(ids.to(self.device), mask.to(self.device)).mean).cpu()
        return text_image([s for c, o in zip(self.captions, out) for s in (f"> {c}", f"< {self.tokenizer.decode(o)}")])

    def extras(self) -> dict[str, bytes]:
        return {"tokenizer.json": self.tokenizer.to_json().encode()}


def frozen_text_vae(run: str | Path) -> tuple[nn.Module, Any]:
    """The EMA text VAE of a text_vae run's newest good checkpoint (or of a checkpoint folder), frozen, in eval
    mode, and its tokenizer."""
    from t2i.io.weights import load_into
    from t2i.train.checkpoint import latest_checkpoint, read_checkpoint

    run = Path(run)
    path = run if (run / "manifest.json").is_file() else latest_checkpoint(run / "checkpoints", log=lambda m: None)
    if path is None or not path.is_dir():
        raise RecipeError(f"text_vae_run = '{run}': no complete checkpoint there (t2i train shapes_text_vae first)")
    ckpt = read_checkpoint(path)
    if ckpt.config.get("stage") != "text_vae":
        raise RecipeError(f"text_vae_run = '{run}': not a text_vae run")
    vae, tok = build_text_vae(TextVAEOptions.from_dict(ckpt.config["text_vae"]), ckpt.extra("tokenizer.json").decode())
    load_into(vae, {k[len("text_vae."):]: v for k, v in ckpt.ema.items() if k.startswith("text_vae.")}, where=str(path))
    return vae.eval().requires_grad_(False), tok
