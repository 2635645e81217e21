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

from t2i.diffusion import TimestepNet, classifier_log_prob, clip_log_prob
from t2i.diffusion.guidance import LogProb
from t2i.encoders.clip import CLIPConfig, CLIPModel
from t2i.encoders.labels import NUM_LABELS, labels_from_prompts
from t2i.encoders.tokenizer import WordTokenizer
from t2i.nn.classifier import ClassifierConfig, NoisyClassifier
from t2i.systems.base import ScheduleConfig, check_fields, load_module, save_module, write_system_json

GUIDE_FORMAT = 1  # version of the guide folder layout written by `Guide.save`


def guide_folder(system_folder: str | Path, kind: str) -> Path:
    """Where a system folder keeps its guide of a kind: <folder>/guide_<kind>/."""
    return Path(system_folder) / f"guide_{kind}"


@dataclass(frozen=True)
class GuideConfig:
    """Which guide, its network's config fields, and the noise schedule it was trained on (its t of a sigma)."""

    kind: str = "clip"  # clip: a noise-aware CLIPModel; classifier: a NoisyClassifier over the 40 label pairs
    net: dict = field(default_factory=dict)  # CLIPConfig (noise_aware) or ClassifierConfig fields
    schedule: ScheduleConfig = ScheduleConfig(name="cosine")

    def __post_init__(self) -> None:
        if self.kind not in GUIDES:
            raise ValueError(f"unknown guide kind {self.kind!r}; choose from {', '.join(GUIDES)}")
        if isinstance(self.schedule, Mapping):
            object.__setattr__(self, "schedule", ScheduleConfig.from_dict(self.schedule))
        net = GUIDES[self.kind].check_net(self.net)
        object.__setattr__(self, "net", json.loads(json.dumps(net.to_dict())))  # complete, checked, plain

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "net": self.net, "schedule": self.schedule.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GuideConfig":
        check_fields(cls, d)
        return cls(**d)


class Guide(nn.Module):
    """A noise-aware network and its schedule: prompts -> log p(prompt | x, sigma) (`log_prob`)."""

    kind = ""  # "clip" | "classifier": the guidance type it serves

    def __init__(self, config: GuideConfig, net: nn.Module, name: str = "guide"):
        super().__init__()
        if config.kind != self.kind:
            raise ValueError(f"a {config.kind} guide config given to {type(self).__name__}")
        self.config, self.net, self.name = config, net, name
        self.schedule = config.schedule.build()

    @staticmethod
    def check_net(net: Mapping[str, Any]) -> Any:
        """The network's config object from its fields, or a ValueError saying why it cannot guide."""
        raise NotImplementedError

    @classmethod
    def build(cls, config: GuideConfig, tokenizer: WordTokenizer | None = None, name: str = "guide") -> "Guide":
        """A freshly initialised guide of config (CLIP takes the tokenizer; default: ShapesWorld's)."""
        raise NotImplementedError

    @property
    def image_size(self) -> int:
        raise NotImplementedError

    def log_prob(self, prompts: list[str]) -> LogProb:
        """log p(prompt_i | x_i, sigma) for a batch of prompts, as `GradientGuidance` takes it."""
        raise NotImplementedError

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


def folder_guide_kind(folder: Path) -> str | None:
    """The kind of the guide folder (its system.json says "<kind>_guide"), or None if it is no guide folder."""
    if not (folder / "system.json").is_file():
        return None
    system = str(json.loads((folder / "system.json").read_text()).get("system"))
    kind = system[:-len("_guide")] if system.endswith("_guide") else None
    return kind if kind in GUIDES else None


def check_guide_kind(where: Path, found: str | None, kind: str | None) -> None:
    """Raise a one-line ValueError unless `where` holds a guide (found), of `kind` when given."""
    what = f"a {kind} guide" if kind else "a guide"
    if found is None:
        raise ValueError(f"{where}: not {what} (a guide folder, or a noise-aware clip or classifier run); "
                         f"write one with `t2i convert RUN FOLDER`")
    if kind is not None and found != kind:
        raise ValueError(f"{where}: holds a {found} guide, not a {kind} guide")


def load_guide(folder: str | Path, kind: str | None = None) -> Guide:
    """Read a guide folder written by `Guide.save`; with `kind`, refuse a guide of another kind.
    Raises ValueError with a one-line reason."""
    folder = Path(folder)
    found = folder_guide_kind(folder)
    check_guide_kind(folder, found, kind)
    meta = json.loads((folder / "system.json").read_text())
    if meta.get("format") != GUIDE_FORMAT:
        raise ValueError(f"{folder}: guide folder format {meta.get('format')!r}; this t2i reads {GUIDE_FORMAT}")
    cls = GUIDES[found]
    guide = cls.build(GuideConfig.from_dict(meta["config"]), cls._read_tokenizer(folder), meta.get("name", "guide"))
    load_module(guide.net, folder / "model.safetensors")
    return guide.eval().requires_grad_(False)
