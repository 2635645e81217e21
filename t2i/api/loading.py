"""Loading: `t2i.load(name_or_path)` (a named system with its shipped weights, or a model on disk in any
format t2i reads), and the evaluators' generators over a loaded system."""

from __future__ import annotations

import os
from pathlib import Path

from t2i.api.guides import guide_kind
from t2i.api.runs import is_training_run, system_from_training_run
from t2i.io.weights import PICKLE_SUFFIXES, shipped_weights


def load(name_or_path: str | os.PathLike, *, device: str = "cpu", config_dir: str | os.PathLike | None = None):
    """A system ready to `generate`: "ldm" (shipped ShapesWorld weights), a t2i system folder, a diffusers
    pipeline folder (`t2i.io.diffusers_folders.PIPELINES`: Stable Diffusion, its ControlNet pipeline, DeepFloyd IF
    stage I), or an original single-file SD checkpoint (.safetensors; `config_dir` names the
    folder with its tokenizer/ when it is not beside the file). Raises ValueError / FileNotFoundError
    with a one-line reason."""
    from t2i.systems import SYSTEMS

    check_device(device)
    text = str(name_or_path)
    path = Path(name_or_path)
    if text in SYSTEMS and not path.exists():
        folder = shipped_weights(text)
        if not (folder / "system.json").is_file():
            raise ValueError(f"no shipped weights are installed yet for the '{text}' system ({folder} is missing); "
                             "train them with `t2i train`, or pass --model PATH (a t2i, diffusers or single-file "
                             "model)")
        return _load_path(folder, config_dir).to(device)
    if not path.exists():
        raise ValueError(f"unknown system or path '{text}': systems are {', '.join(sorted(SYSTEMS))}; "
                         "or give an existing model folder or .safetensors file")
    return _load_path(path, config_dir).to(device)


def _system_kind(path: Path) -> object:
    """system.json's "system", or a one-line ValueError when the file is not a JSON object."""
    from t2i.systems.base import read_json_object

    return read_json_object(path).get("system")


def check_device(device: "str | object") -> None:
    """A one-line ValueError unless torch knows the device and this machine has it (cpu, cuda[:N], mps, ...)."""
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {str(device)!r}: give cpu, cuda, cuda:N or mps") from None
    if d.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(device)!r} is not available: this machine has no CUDA GPU torch can use")
        if d.index is not None and d.index >= count:
            raise ValueError(f"device {str(device)!r} is not available: this machine has {count} CUDA GPU(s), "
                             f"cuda:0 .. cuda:{count - 1}")
    elif d.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} is not available on this machine")
    elif d.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {str(device)!r} is not one t2i runs on: give cpu, cuda, cuda:N or mps")


def _load_path(path: Path, config_dir: str | os.PathLike | None):
    from t2i.systems import SYSTEMS

    if path.is_dir():
        if is_training_run(path):
            return system_from_training_run(path)
        if (path / "system.json").is_file():
            kind = _system_kind(path / "system.json")
            if guide_kind(path) is not None:
                raise ValueError(f"{path}: a {guide_kind(path)} guide, not a system: give it to a GLIDE system "
                                 "as guide= (or --guide PATH)")
            if kind not in SYSTEMS:
                raise ValueError(f"{path}: system.json names an unknown system {kind!r}")
            return SYSTEMS[kind].load(path)
        if (path / "model_index.json").is_file():
            from t2i.io.diffusers_folders import load_diffusers_folders

            return load_diffusers_folders(path)
        raise ValueError(f"{path}: neither a t2i system folder (system.json), a diffusers folder (model_index.json) "
                         "nor a `t2i train` run (checkpoints/)")
    if path.suffix.lower() == ".safetensors":
        from t2i.io.sd_checkpoint import load_sd_checkpoint

        return load_sd_checkpoint(path, config_dir)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        from t2i.io.weights import check_safetensors_file

        check_safetensors_file(path)  # raises: pickle checkpoints are refused by name
    raise ValueError(f"{path}: not a model t2i reads (a t2i or diffusers folder, or a .safetensors checkpoint)")


def model_generator(model: str, settings):
    """generate_fn(prompts, seed) -> PIL images for ShapesEval from a named system or a model path, sampled
    as `settings` (a `t2i.eval.run.ModelSettings`, whose request is checked once) says."""
    system = _system_for(model, settings.device, "txt2img")
    request = settings.request()

    def generate_fn(prompts: list[str], seed: int):
        return system.generate(request.of(request, prompts=tuple(prompts), seed=seed))

    return generate_fn


def inpaint_generator(model: str, settings):
    """inpaint_fn(image, mask, prompt, seed) -> the inpainted PIL image for InpaintEval (strength 1), from a
    named system or a model path, sampled as `settings` (a `t2i.eval.run.ModelSettings`) says."""
    system = _system_for(model, settings.device, "inpaint")
    request = settings.request()

    def inpaint_fn(image, mask, prompt: str, seed: int):
        return system.generate(request.of(request, prompts=(prompt,), image=image, mask=mask, seed=seed))[0]

    return inpaint_fn


def _system_for(model: str, device: str, capability: str):
    """The loaded system, or a one-line ValueError when it cannot do what an evaluator asks."""
    system = load(model, device=device)
    if not system.supports(capability):
        raise ValueError(system.unsupported(capability))
    return system
