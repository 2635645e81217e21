"""A `t2i train` run -> a system: the LDM or GLIDE system of diffusion runs (EMA weights of the newest
good checkpoint), the ControlNet system of controlnet runs, with the helpers that read a run's checkpoint."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from t2i.io.weights import system_folder


def is_training_run(path: Path) -> bool:
    """A `t2i train` run folder (checkpoints/) or one of its checkpoint folders (manifest.json)."""
    return path.is_dir() and ((path / "checkpoints").is_dir() or (path / "manifest.json").is_file())


def checkpoint_of_step(run: Path, step: int) -> Path:
    """The checkpoint folder of `step` in a `t2i train` run (a checkpoint folder is its own step)."""
    from t2i.train.checkpoint import list_checkpoints, step_dir

    if (run / "manifest.json").is_file():
        return run
    path = step_dir(run / "checkpoints", step)
    if not path.is_dir():
        steps = ", ".join(str(int(p.name[5:])) for p in list_checkpoints(run / "checkpoints")) or "none"
        raise ValueError(f"{run}: no checkpoint of step {step} (its checkpoints: steps {steps})")
    return path


def _run_checkpoint(run: Path, step: int | None = None):
    """(checkpoint path, checkpoint) of a `t2i train` run (its newest good checkpoint, or the one of `step`) or
    checkpoint folder."""
    from t2i.train.checkpoint import latest_checkpoint, read_checkpoint

    if step is not None:
        ckpt_path = checkpoint_of_step(run, step)
    elif (run / "manifest.json").is_file():
        ckpt_path = run
    else:
        ckpt_path = latest_checkpoint(run / "checkpoints", log=lambda m: None)
    if ckpt_path is None:
        raise ValueError(f"{run}: no complete checkpoint in {run / 'checkpoints'}")
    return ckpt_path, read_checkpoint(ckpt_path)


def _diffusion_run(run: Path):
    """(checkpoint path, checkpoint, its [diffusion] options) of a `t2i train` diffusion run or checkpoint
    folder (the newest good checkpoint) whose network is the t2i UNet."""
    ckpt_path, ckpt = _run_checkpoint(run)
    from t2i.systems.guides import GUIDES

    stage = ckpt.config.get("stage")
    if stage in GUIDES:
        raise ValueError(f"{ckpt_path}: a {stage} run is a guide, not a system: write it into a GLIDE folder with "
                         f"`t2i convert {run} GLIDE_FOLDER/guide_{stage}`")
    from t2i.encoders.registry import TEXT_ENCODERS

    o = ckpt.config.get("diffusion") or {}
    if stage != "diffusion" or o.get("text_encoder", "word") not in TEXT_ENCODERS:  # word, minilm, t5, ...
        raise ValueError(f"{ckpt_path}: not a text-conditioned diffusion run (stage 'diffusion' with a text "
                         f"encoder: {', '.join(TEXT_ENCODERS)})")
    if o.get("network", "unet") != "unet":
        raise ValueError(f"{ckpt_path}: network {o.get('network')!r} is not the t2i UNet")
    from t2i.train.stages.diffusion import DiffusionOptions

    return ckpt_path, ckpt, DiffusionOptions.from_dict(o, "[diffusion]")


def _run_schedule(o: dict):
    """The ScheduleConfig a guide run's options (schedule, timesteps) trained on."""
    from t2i.systems import ScheduleConfig

    return ScheduleConfig.named(o.get("schedule", "cosine"), int(o.get("timesteps", 1000)))


def _load_ema(ckpt, ckpt_path: Path, parts: dict) -> None:
    """Load a checkpoint's EMA weights into modules by their prefix in the stage's ModuleDict ("net", "text")."""
    from t2i.io.weights import load_into

    for prefix, module in parts.items():
        load_into(module, {k[len(prefix) + 1:]: v for k, v in ckpt.ema.items() if k.startswith(prefix + ".")},
                  where=f"{ckpt_path} ({prefix})")


def _run_tokenizer(ckpt, kind: str):
    from t2i.encoders import WordTokenizer

    return WordTokenizer.from_json(ckpt.extra("tokenizer.json").decode()) if kind == "word" else None


def system_from_training_run(run: str | os.PathLike, first_stage: str | os.PathLike | None = None):
    """The LDM system of a `t2i train` diffusion run (its newest good checkpoint, EMA weights) over the
    autoencoder run its recipe names (`first_stage`, resolved from the working directory, else beside
    the run); `t2i convert RUN t2i/weights/ldm` makes shipped weights of it. A pixel-space run (no
    first_stage) is a GLIDE base model (`system_from_training_runs`)."""
    from t2i.io.weights import load_into
    from t2i.nn.unet import UNetConfig
    from t2i.systems import LDM, LDMConfig, TextConfig
    from t2i.train.stages.diffusion import load_first_stage

    run = Path(run)
    if _run_stage(run) == "controlnet":
        return controlnet_from_training_runs([run])
    ckpt_path, ckpt, o = _diffusion_run(run)
    if not o.first_stage and first_stage is None:
        return system_from_training_runs(run)
    ae_path = Path(first_stage) if first_stage is not None else Path(o.first_stage)
    if first_stage is None and not ae_path.exists() and system_folder(ae_path) is None:
        ae_path = run.parent / ae_path.name
    autoencoder = load_first_stage(ae_path, "cpu", o.latent_scale)
    config = LDMConfig(unet=UNetConfig.from_dict(o.net), autoencoder=autoencoder.config, text=o.text_config,
                       schedule=o.schedule_config, prediction=o.prediction, sampling=o.sampling_config,
                       sample_size=int(ckpt.config.get("data", {}).get("size", 64)))
    system = LDM.build(config, _run_tokenizer(ckpt, o.text_encoder), name=run.name)
    _load_ema(ckpt, ckpt_path, {"net": system.unet, "text": system.text_encoder})
    load_into(system.autoencoder, autoencoder.state_dict(), where=str(ae_path))
    return system.eval()


SAMPLE_LOWRES_NOISE = 0.1  # the upsampler's low-res augmentation level at sampling (at most its training maximum)


def system_from_training_runs(base_run: str | os.PathLike, upsampler_run: str | os.PathLike | None = None):
    """The GLIDE system of a pixel-space `t2i train` diffusion run (the base; inpainting if trained with
    `inpaint`) and optionally a super-resolution run (`lowres_size` = the base's image size), EMA
    weights of their newest good checkpoints; `t2i convert` writes it as a t2i folder."""
    from t2i.systems import GLIDE, GLIDEConfig

    stages, names = _pixel_stages(base_run, upsampler_run, "GLIDE")
    config = GLIDEConfig(stages[0][0], stages[1][0] if len(stages) > 1 else None)
    system = GLIDE.build(config, stages[0][1], stages[-1][1], name="+".join(names))
    for stage, (_, _, ckpt, ckpt_path) in zip(system.stages, stages):
        _load_ema(ckpt, ckpt_path, {"net": stage.unet, "text": stage.text_encoder})
    return system.eval()



def _pixel_stages(base_run: str | os.PathLike, sr_run: str | os.PathLike | None, system: str):
    """([(PixelStageConfig, tokenizer, checkpoint, its path)], run names) of a pixel-space base run and an
    optional super-resolution run; the sampling augmentation level is SAMPLE_LOWRES_NOISE at most."""
    from t2i.nn.unet import UNetConfig
    from t2i.systems.pixel_stage import PixelStageConfig

    stages, names = [], []
    for run in [Path(base_run)] + ([Path(sr_run)] if sr_run is not None else []):
        ckpt_path, ckpt, o = _diffusion_run(run)
        if o.first_stage:
            raise ValueError(f"{ckpt_path}: a latent diffusion run (first_stage) is not a {system} stage")
        config = PixelStageConfig(
            unet=UNetConfig.from_dict(o.net), schedule=o.schedule_config, sampling=o.sampling_config,
            text=o.text_config, prediction=o.prediction, sample_size=int(ckpt.config.get("data", {}).get("size", 64)),
            lowres_size=o.lowres_size, inpaint=o.inpaint, full_mask_txt2img=o.inpaint and o.full_masks > 0,
            lowres_noise=min(SAMPLE_LOWRES_NOISE, o.lowres_noise))
        stages.append((config, _run_tokenizer(ckpt, o.text_encoder), ckpt, ckpt_path))
        names.append(run.name)
    return stages, names


def imagen_from_training_runs(base_run: str | os.PathLike, sr_run: str | os.PathLike | None = None,
                              threshold: str = "dynamic:0.995"):
    """The Imagen system of a pixel-space base run and optionally a super-resolution run (`lowres_size` = the
    base's size), EMA weights of their newest good checkpoints. Both stages read one text encoder, so both runs
    must be conditioned on the same frozen one (minilm, or t5: a user's T5 folder); `.save(folder)` writes it
    without the encoder."""
    from t2i.encoders.registry import TEXT_ENCODERS
    from t2i.systems import Imagen, ImagenConfig

    stages, names = _pixel_stages(base_run, sr_run, "Imagen")
    text = stages[0][0].text
    if TEXT_ENCODERS[text.kind].trained or any(c.text != text for c, *_ in stages):
        raise ValueError(f"{stages[0][3]}: Imagen's stages share one frozen text encoder: train both runs with the "
                         "same frozen text_encoder (minilm or t5) and [diffusion.text]")
    if any(c.inpaint for c, *_ in stages):
        raise ValueError(f"{stages[0][3]}: an inpainting run is not an Imagen stage")
    config = ImagenConfig(stages[0][0], stages[1][0] if len(stages) > 1 else None, threshold)
    system = Imagen.build(config, name="+".join(names))
    for stage, (_, _, ckpt, ckpt_path) in zip(system.stages, stages):
        _load_ema(ckpt, ckpt_path, {"net": stage.unet})
    return system.eval()


def _run_stage(run: Path) -> str | None:
    """The stage a run folder (recipe.json) or checkpoint folder (config.json) trained, read without its weights."""
    for name in ("config.json", "recipe.json"):
        if (run / name).is_file():
            return json.loads((run / name).read_text()).get("stage")
    return None


def controlnet_from_training_runs(runs: Sequence[str | os.PathLike], step: int | None = None):
    """The ControlNet system of `t2i train` controlnet runs, one control kind each, over the one base LDM they
    all trained over (EMA weights of each run's newest good checkpoint, or of its checkpoint at `step`: the
    accuracy-vs-step curve); `.save(folder)` stores the base again only when it is not a shipped system."""
    from t2i.nn.controlnet import ControlNet, ControlNetConfig
    from t2i.systems.controlnet import ControlNetSystem, _load_base

    if not runs:
        raise ValueError("give at least one controlnet training run")
    nets, bases = {}, set()
    for run in map(Path, runs):
        ckpt_path, ckpt = _run_checkpoint(run, step)
        if ckpt.config.get("stage") != "controlnet":
            raise ValueError(f"{ckpt_path}: a {ckpt.config.get('stage')!r} run, not a controlnet run")
        meta = json.loads(ckpt.extra("controlnet.json"))  # what the stage trained: base, kind, architecture
        if meta["kind"] in nets:
            raise ValueError(f"{ckpt_path}: two runs train the {meta['kind']!r} ControlNet; give one run per kind")
        nets[meta["kind"]] = net = ControlNet(ControlNetConfig.from_dict(meta["controlnet"]))
        _load_ema(ckpt, ckpt_path, {"controlnet": net})
        bases.add(meta["base"])
    if len(bases) != 1:
        raise ValueError(f"the runs trained over different bases ({', '.join(sorted(map(repr, bases)))}): "
                         "a ControlNet system has one base")
    base = bases.pop()
    return ControlNetSystem.of(_load_base(base), nets, base).eval()
