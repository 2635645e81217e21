"""`t2i.load(name_or_path)`: a named system with its shipped weights, or a model on disk in any format t2i reads."""

from __future__ import annotations

import json
import os
from pathlib import Path

from t2i.io.weights import PICKLE_SUFFIXES, WEIGHTS_DIR, shipped_weights, system_folder  # noqa: F401  (re-exported)


def load(name_or_path: str | os.PathLike, *, device: str = "cpu", config_dir: str | os.PathLike | None = None):
    """A system ready to `generate`: "ldm" (shipped ShapesWorld weights), a t2i system folder, a diffusers
    Stable Diffusion folder, or an original single-file SD checkpoint (.safetensors; `config_dir` names the
    folder with its tokenizer/ when it is not beside the file). Raises ValueError / FileNotFoundError
    with a one-line reason."""
    from t2i.systems import SYSTEMS

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


def _load_path(path: Path, config_dir: str | os.PathLike | None):
    from t2i.systems import SYSTEMS

    if path.is_dir():
        if is_training_run(path):
            return system_from_training_run(path)
        if (path / "system.json").is_file():
            kind = json.loads((path / "system.json").read_text()).get("system")
            if _guide_kind(path) is not None:
                raise ValueError(f"{path}: a {_guide_kind(path)} guide, not a system: give it to a GLIDE system "
                                 "as guide= (or --guide PATH)")
            if kind not in SYSTEMS:
                raise ValueError(f"{path}: system.json names an unknown system {kind!r}")
            return SYSTEMS[kind].load(path)
        if (path / "model_index.json").is_file():
            from t2i.io.diffusers_pipeline import load_diffusers_pipeline

            return load_diffusers_pipeline(path)
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
    as `settings` (a `t2i.eval.run.ModelSettings`) says."""
    system = load(model, device=settings.device)

    def generate_fn(prompts: list[str], seed: int):
        return system.generate(prompts, seed=seed, steps=settings.steps, sampler=settings.sampler,
                               guidance=settings.guidance, precision=settings.precision)

    return generate_fn


def inpaint_generator(model: str, settings):
    """inpaint_fn(image, mask, prompt, seed) -> the inpainted PIL image for InpaintEval (strength 1), from a
    named system or a model path, sampled as `settings` (a `t2i.eval.run.ModelSettings`) says."""
    system = load(model, device=settings.device)

    def inpaint_fn(image, mask, prompt: str, seed: int):
        return system.generate(prompt, image=image, mask=mask, strength=1.0, seed=seed, steps=settings.steps,
                               sampler=settings.sampler, guidance=settings.guidance)[0]

    return inpaint_fn


def open_image(path: str | os.PathLike, what: str):
    """A PIL image from a file, or a ValueError saying plainly why not."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} '{path}': no such file")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{what} '{path}' is not an image PIL can read ({e.__class__.__name__})") from None


def output_paths(out: str | os.PathLike, n: int) -> tuple[list[Path], Path | None]:
    """OUT.png for one image; OUT-0.png ... OUT-{n-1}.png and OUT-grid.png for several."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        out = out.with_name(out.name + ".png")
    if n == 1:
        return [out], None
    return [out.with_name(f"{out.stem}-{i}.png") for i in range(n)], out.with_name(f"{out.stem}-grid.png")


def check_guidance_type(system, guidance_type: str) -> None:
    """A ValueError unless the system samples with this guidance type (GLIDE: cfg, clip, classifier)."""
    if guidance_type not in getattr(system, "guidance_types", ("cfg",)):
        raise ValueError(f"--guidance-type {guidance_type} needs a GLIDE system; {getattr(system, 'name', '?')!r} is "
                         f"{type(system).__name__}, which takes classifier-free guidance only")


def generate_files(system, prompt, out: str | os.PathLike, **options) -> list[Path]:
    """Generate and write PNGs carrying their parameters (and a grid when num_images > 1); return the paths.
    `prompt` is a GenerationRequest, or a prompt with generate()'s keywords (progress defaults to True)."""
    from t2i.io.images import image_grid, save_png
    from t2i.systems.request import GenerationRequest

    defaults = {} if isinstance(prompt, GenerationRequest) else {"progress": True}
    request = GenerationRequest.of(prompt, **{**defaults, **options})
    images = system.generate(request)
    paths, grid = output_paths(out, len(images))
    written = [save_png(im, p, im.info) for im, p in zip(images, paths)]
    if grid is not None:
        meta = {k: v for k, v in images[0].info.items() if k != "batch_index"}
        written.append(save_png(image_grid(images), grid, meta))
    return written


CONVERT_FORMATS = ("t2i", "diffusers", "single-file")


CONVERT_DTYPES = ("float32", "float16", "bfloat16")


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str | None = None,
            config_dir: str | os.PathLike | None = None, dtype: str = "float32") -> Path:
    """Read a model in any format t2i reads and write it as a t2i folder, a diffusers folder or one
    original-layout .safetensors file (default: diffusers for a t2i folder, t2i for anything else);
    a t2i folder may store its weights as float16 or bfloat16 (`dtype`). A guide (a noise-aware clip or
    classifier run, or a guide folder) is written as a guide folder, e.g. a GLIDE folder's guide_clip/."""
    src, dst = Path(src), Path(dst)
    if dtype not in CONVERT_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(CONVERT_DTYPES)}")
    if dst.exists() and (dst.is_file() or any(dst.iterdir())):
        raise ValueError(f"{dst} already exists and is not empty; give a new path")
    guide_kind = _guide_kind(src)
    if guide_kind is not None:
        if to not in (None, "t2i"):
            raise ValueError(f"{src} is a {guide_kind} guide: it converts to a t2i guide folder only (--to t2i)")
        import torch

        return load_guide(src).save(dst, dtype=getattr(torch, dtype))
    if to is None:
        to = "diffusers" if (src / "system.json").is_file() else "t2i"  # a diffusers, single-file or training run
    if to not in CONVERT_FORMATS:
        raise ValueError(f"unknown target format {to!r}; choose from {', '.join(CONVERT_FORMATS)}")
    if dtype != "float32" and to != "t2i":
        raise ValueError(f"--dtype {dtype} is for t2i folders; diffusers and single-file exports are float32")
    system = load(src, config_dir=config_dir)
    if to == "t2i":
        import torch

        return system.save(dst, dtype=getattr(torch, dtype))
    if to == "diffusers":
        from t2i.io.diffusers_pipeline import save_diffusers_pipeline

        return save_diffusers_pipeline(system, dst)
    from t2i.io.sd_single_file import StableDiffusionWeights, save_sd_single_file

    if dst.suffix.lower() != ".safetensors":
        raise ValueError(f"{dst}: a single-file checkpoint is written as a '.safetensors' file")
    if system.config.text.kind != "clip":
        raise ValueError("only CLIP-text systems have an original single-file layout")
    weights = StableDiffusionWeights(unet=system.unet, vae=system.autoencoder,
                                     text_encoder=system.text_encoder.transformer)
    return save_sd_single_file(weights, dst)


def is_training_run(path: Path) -> bool:
    """A `t2i train` run folder (checkpoints/) or one of its checkpoint folders (manifest.json)."""
    return path.is_dir() and ((path / "checkpoints").is_dir() or (path / "manifest.json").is_file())


def _run_checkpoint(run: Path):
    """(checkpoint path, checkpoint) of a `t2i train` run (its newest good checkpoint) or checkpoint folder."""
    from t2i.train.checkpoint import latest_checkpoint, read_checkpoint

    ckpt_path = run if (run / "manifest.json").is_file() else latest_checkpoint(run / "checkpoints", log=lambda m: None)
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
    o = ckpt.config.get("diffusion") or {}
    if stage != "diffusion" or o.get("text_encoder", "word") not in ("word", "minilm"):
        raise ValueError(f"{ckpt_path}: not a text-conditioned diffusion run (stage 'diffusion' with a word or "
                         "minilm text encoder)")
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
    from t2i.nn.unet import UNetConfig
    from t2i.systems import GLIDE, GLIDEConfig, GLIDEStageConfig, TextConfig

    stages, names = [], []
    for run in [Path(base_run)] + ([Path(upsampler_run)] if upsampler_run is not None else []):
        ckpt_path, ckpt, o = _diffusion_run(run)
        if o.first_stage:
            raise ValueError(f"{ckpt_path}: a latent diffusion run (first_stage) is not a GLIDE stage")
        config = GLIDEStageConfig(
            unet=UNetConfig.from_dict(o.net), schedule=o.schedule_config, sampling=o.sampling_config,
            text=o.text_config, prediction=o.prediction, sample_size=int(ckpt.config.get("data", {}).get("size", 64)),
            lowres_size=o.lowres_size, inpaint=o.inpaint, lowres_noise=min(SAMPLE_LOWRES_NOISE, o.lowres_noise))
        stages.append((config, _run_tokenizer(ckpt, o.text_encoder), ckpt, ckpt_path))
        names.append(run.name)
    config = GLIDEConfig(stages[0][0], stages[1][0] if len(stages) > 1 else None)
    system = GLIDE.build(config, stages[0][1], stages[-1][1], name="+".join(names))
    for stage, (_, _, ckpt, ckpt_path) in zip(system.stages, stages):
        _load_ema(ckpt, ckpt_path, {"net": stage.unet, "text": stage.text_encoder})
    return system.eval()



# --- guides: a noise-aware CLIP or classifier for GLIDE's gradient guidance ----------------------------


def _guide_kind(path: Path) -> str | None:
    """"clip" / "classifier" when path is a guide folder or a `t2i train` run (or checkpoint) of a guide stage."""
    from t2i.systems.guide_folders import GUIDES, folder_guide_kind

    if is_training_run(path):  # its newest checkpoint's config says (loading it verifies the checkpoint)
        from t2i.train.checkpoint import list_checkpoints

        ckpts = [path] if (path / "manifest.json").is_file() else list_checkpoints(path / "checkpoints")
        config = ckpts[-1] / "config.json" if ckpts else None
        stage = json.loads(config.read_text()).get("stage") if config is not None and config.is_file() else None
        return stage if stage in GUIDES else None
    return folder_guide_kind(path)


def load_guide(path: str | os.PathLike, kind: str | None = None):
    """A GLIDE guide from a guide folder or a `t2i train` noise-aware clip / classifier run; with `kind`,
    refuse a guide of another kind. Raises ValueError with a one-line reason."""
    from t2i.systems.guide_folders import check_guide_kind, load_guide as load_guide_folder

    path = Path(path)
    if not path.exists():
        raise ValueError(f"guide '{path}': no such folder")
    if not is_training_run(path):
        return load_guide_folder(path, kind)
    check_guide_kind(path, _guide_kind(path), kind)
    return guide_from_training_run(path)


def guide_from_training_run(run: str | os.PathLike):
    """The guide of a `t2i train` clip (noise-aware) or classifier run: EMA weights of its newest good
    checkpoint and the schedule it was trained on; `t2i convert RUN FOLDER` saves it as a guide folder."""
    from t2i.systems.guides import GUIDES, GuideConfig

    run = Path(run)
    ckpt_path, ckpt = _run_checkpoint(run)
    stage = ckpt.config.get("stage")
    if stage not in GUIDES:
        raise ValueError(f"{ckpt_path}: a {stage!r} run, not a guide (a noise-aware clip run or a classifier run)")
    options = ckpt.config.get(stage) or {}
    net = _guide_network(stage, options, ckpt)
    try:
        config = GuideConfig(stage, net.config.to_dict(), _run_schedule(options))
    except ValueError as e:
        raise ValueError(f"{ckpt_path}: {e}") from None
    guide = GUIDES[stage](config, net, name=run.name)
    _load_ema(ckpt, ckpt_path, {stage: guide.net})
    return guide.eval().requires_grad_(False)


def _guide_network(stage: str, options: dict, ckpt):
    """The network a guide stage trains, built as the stage builds it (its [clip] / [classifier] table)."""
    if stage == "clip":
        from t2i.train.stages.clip import CLIPOptions, build_clip

        return build_clip(CLIPOptions.from_dict(options), ckpt.extra("tokenizer.json").decode())
    from t2i.train.stages.classifier import ClassifierOptions, build_classifier

    return build_classifier(ClassifierOptions.from_dict(options))
