"""GLIDE's guide models as saved artefacts (Nichol et al. 2022, sec. 2.3-2.4): a noise-aware CLIP or a
noise-aware (colour, shape) classifier with the noise schedule it was trained on, turned into the
log p(prompt | x_t) that `GradientGuidance` follows for a batch of prompts.

A guide folder holds system.json ("clip_guide" / "classifier_guide", its config), model.safetensors and,
for CLIP, tokenizer.json. A GLIDE system folder keeps its guides in guide_clip/ and guide_classifier/
(`guide_folder`); `t2i convert RUN FOLDER` writes one from a `t2i train` clip or classifier run.

Composition only: the networks are `t2i.encoders.clip` and `t2i.nn.classifier`, the log-probabilities
`t2i.diffusion.guidance`, the prompt labels `t2i.encoders.labels`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from t2i.config import Config
from t2i.diffusion import TimestepNet, classifier_log_prob, clip_log_prob
from t2i.diffusion.config import ScheduleConfig
from t2i.diffusion.guidance import LogProb
from t2i.encoders.clip import CLIPConfig, CLIPModel
from t2i.encoders.labels import NUM_LABELS, labels_from_prompts
from t2i.encoders.tokenizer import WordTokenizer
from t2i.nn.classifier import ClassifierConfig, NoisyClassifier
from t2i.systems.base import load_module, save_module, write_system_json

GUIDE_FORMAT = 1  # version of the guide folder layout written by `Guide.save`


def guide_folder(system_folder: str | Path, kind: str) -> Path:
    """Where a system folder keeps its guide of a kind: <folder>/guide_<kind>/."""
    return Path(system_folder) / f"guide_{kind}"


@dataclass(frozen=True)
class GuideConfig(Config):
    """Which guide, its network's config fields, and the noise schedule it was trained on (its t of a sigma)."""

    kind: str = "clip"  # clip: a noise-aware CLIPModel; classifier: a NoisyClassifier over the 40 label pairs
    net: dict = field(default_factory=dict)  # CLIPConfig (noise_aware) or ClassifierConfig fields
    schedule: ScheduleConfig = ScheduleConfig(name="cosine")

    def __post_init__(self) -> None:
        if self.kind not in GUIDES:
            raise ValueError(f"unknown guide kind {self.kind!r}; choose from {', '.join(GUIDES)}")
        net = GUIDES[self.kind].check_net(self.net)
        object.__setattr__(self, "net", json.loads(json.dumps(net.to_dict())))  # complete, checked, plain


class Guide(nn.Module):
    """A noise-aware network and its schedule: prompts -> log p(prompt | x, sigma) (`log_prob`)."""

    kind = ""  # "clip" | "classifier": the guidance type it serves

    def __init__(self, config: GuideConfig, net: nn.Module, name: str = "guide"):
        super().__init__()
        if config.kind != self.kind:
            raise ValueError(f"a {config.kind} guide config given to {type(self).__name__}")
        self.config, self.net, self.name = config, net, name
        self.schedule = config.schedule.build()

    # A kind defines check_net(fields) -> its network config (or a ValueError saying why it cannot guide),
    # build(config, tokenizer, name) -> a fresh guide, image_size, and log_prob(prompts) -> log p(prompt_i |
    # x_i, sigma) as `GradientGuidance` takes it.

    def save(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write the guide folder; floating tensors cast to `dtype` when given (loading casts back)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_module(self.net, folder / "model.safetensors", dtype)
        self._save_extras(folder)
        write_system_json(folder, f"{self.kind}_guide", GUIDE_FORMAT, self.name, self.config)
        return folder

    def _save_extras(self, folder: Path) -> None:
        """Files beside the weights (CLIP: its tokenizer)."""

    @classmethod
    def _read_tokenizer(cls, folder: Path) -> WordTokenizer | None:
        return None


class CLIPGuide(Guide):
    """GLIDE's CLIP guidance (sec. 2.4): log p = <f(x_t, t), g(prompt)>, image tower on the noised image."""

    kind = "clip"

    @staticmethod
    def check_net(net: Mapping[str, Any]) -> CLIPConfig:
        config = CLIPConfig.from_dict(dict(net))
        if not config.noise_aware:
            raise ValueError("CLIP guidance needs a noise-aware CLIP (image tower on (x_t, t)): train it with "
                             "[clip] noise_aware = true (recipe shapes_noisy_clip)")
        return config

    @classmethod
    def build(cls, config: GuideConfig, tokenizer: WordTokenizer | None = None, name: str = "guide") -> "CLIPGuide":
        return cls(config, CLIPModel(CLIPConfig.from_dict(config.net), tokenizer or WordTokenizer.for_shapes()), name)

    @property
    def image_size(self) -> int:
        return self.net.config.image.image_size

    def log_prob(self, prompts: list[str]) -> LogProb:
        text = self.net.encode_text(prompts).detach()  # (B, E) unit text embeddings
        return clip_log_prob(lambda x, sigma: self.net.encode_noisy_image(x, sigma, self.schedule), text)

    def _save_extras(self, folder: Path) -> None:
        (folder / "tokenizer.json").write_text(self.net.tokenizer.to_json())

    @classmethod
    def _read_tokenizer(cls, folder: Path) -> WordTokenizer:
        return WordTokenizer.from_json((folder / "tokenizer.json").read_text())


class ClassifierGuide(Guide):
    """GLIDE's / ADM's classifier guidance (sec. 2.3): log p = sum over the prompt's objects of
    log P(some named (colour, shape) pair is present | x_t, t) (`t2i.encoders.labels`)."""

    kind = "classifier"

    @staticmethod
    def check_net(net: Mapping[str, Any]) -> ClassifierConfig:
        config = ClassifierConfig.from_dict(dict(net))
        if config.num_labels != NUM_LABELS:
            raise ValueError(f"a classifier guide predicts the {NUM_LABELS} (colour, shape) pairs prompts are read "
                             f"into; this one has num_labels = {config.num_labels}")
        return config

    @classmethod
    def build(cls, config: GuideConfig, tokenizer: WordTokenizer | None = None,
              name: str = "guide") -> "ClassifierGuide":
        return cls(config, NoisyClassifier(ClassifierConfig.from_dict(config.net)), name)

    @property
    def image_size(self) -> int:
        return self.net.config.image_size

    def log_prob(self, prompts: list[str]) -> LogProb:
        return classifier_log_prob(TimestepNet(self.net, self.schedule), labels_from_prompts(prompts))


GUIDES: dict[str, type[Guide]] = {"clip": CLIPGuide, "classifier": ClassifierGuide}
