"""The `t2i` command: one verb per sub-command, each a thin call into the floors below."""

from __future__ import annotations

import argparse
import inspect
import os
import sys


DEMO_PROMPT = "a red circle to the left of a blue square"
GUIDANCE_TYPES = ("cfg", "clip", "classifier")  # t2i.systems.glide.GUIDANCE_TYPES, without importing torch to parse
PRECISIONS = ("fp32", "bf16", "auto")  # t2i.systems.request.PRECISIONS


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job of `make demo`: generate with the shipped LDM weights",
                       description=f't2i generate "{DEMO_PROMPT}" -n 4 with the shipped ShapesWorld LDM; '
                                   "--toy runs the diffusion core on a toy problem instead.")
    p.add_argument("--out", default="out/demo.png", metavar="FILE", help="PNG path (FILE-i.png + FILE-grid.png)")
    p.add_argument("--toy", action="store_true", help="exact samplers on Gaussian data + a tiny trained MLP")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from t2i.api import shipped_weights

    if args.toy or not (shipped_weights("ldm") / "system.json").is_file():
        from t2i.diffusion.toy import run_toy_demo

        if not args.toy:
            print("no shipped LDM weights are installed: running the diffusion core on a toy problem instead")
        run_toy_demo()
        return 0
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    print(f't2i generate "{DEMO_PROMPT}" --system ldm -n 4 --seed 0 --out {args.out}')
    return main(["generate", DEMO_PROMPT, "--system", "ldm", "-n", "4", "--seed", "0", "--out", args.out])


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score images or models on a benchmark")
    benches = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    s = benches.add_parser("shapes", help="ShapesEval: exact, detector-scored ShapesWorld prompts")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--real", action="store_true", help="score ground-truth renders (the ceiling)")
    src.add_argument("--images", metavar="DIR", help="score a folder of {prompt_index:04d}_{k}.png files")
    src.add_argument("--model", metavar="NAME|PATH", help="generate and score: a named system (ldm) or a model path")
    s.add_argument("--n-per-prompt", type=int, default=4, metavar="N", help="images per prompt (--real, --model)")
    s.add_argument("--steps", type=int, default=None, help="--model: sampler steps (default: the model's)")
    s.add_argument("--sampler", default=None, help="--model: sampler (default: the model's)")
    s.add_argument("--guidance", type=float, default=None, help="--model: guidance scale (default: the model's)")
    s.add_argument("--device", default="cpu", help="--model: torch device")
    s.add_argument("--precision", choices=PRECISIONS, default="fp32", help="--model: fp32, bf16 or auto (see generate)")
    s.add_argument("--size", type=int, default=64, help="render size for --real (scoring is at 64 px)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", metavar="FILE", help="write the result as JSON")
    s.add_argument("--prompts", metavar="FILE", help="write the suite's prompts and specs as JSON lines")
    s.set_defaults(func=_run_eval_shapes)
    s = benches.add_parser("inpaint", help="InpaintEval: fill a masked box with a named shape, checked by the detector")
    s.add_argument("--model", metavar="NAME|PATH", required=True, help="a named system (ldm) or a model path")
    s.add_argument("--n", type=int, default=48, help="number of cases (default: 48)")
    s.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    s.add_argument("--sampler", default=None, help="sampler (default: the model's)")
    s.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    s.add_argument("--device", default="cpu", help="torch device")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", metavar="FILE", help="write the result as JSON")
    s.set_defaults(func=_run_eval_inpaint)
    _add_eval_control(benches)
    _add_eval_caption(benches)
    _add_eval_flows(benches)
    _add_eval_clip(benches)


def _add_eval_control(benches: argparse._SubParsersAction) -> None:
    s = benches.add_parser("control", help="ControlEval: objects placed as the control map says (ControlNet)")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--real", action="store_true", help="score the scenes' own renders (the ceiling, ~1.0)")
    src.add_argument("--model", metavar="NAME|PATH", help="a ControlNet system (named or a path)")
    s.add_argument("--kinds", default="edges,segmentation,scribble", help="control kinds, comma-separated")
    s.add_argument("--n", type=int, default=32, help="held-out scenes per kind (default: 32)")
    s.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    s.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    s.add_argument("--json", metavar="FILE", help="write the result as JSON")
    s.set_defaults(func=_run_eval_control)


def _run_eval_control(args: argparse.Namespace) -> int:
    import json

    from t2i.eval.control import evaluate_control, format_report, system_generator, truth_generator

    kinds = tuple(k for k in args.kinds.split(",") if k)
    if args.n < 1 or not kinds:
        raise UsageError("--n must be at least 1 and --kinds name at least one kind")
    try:
        if args.real:
            generate_fn = truth_generator()
        else:
            from t2i.api import load

            generate_fn = system_generator(load(args.model), args.steps, args.guidance)
        rows = evaluate_control(generate_fn, kinds, n=args.n)
    except (ValueError, OSError) as e:
        raise UsageError(str(e).splitlines()[0]) from None
    print(format_report(rows))
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps({"model": args.model or "real", "kinds": rows}, indent=2) + "\n")
    return 0


def _add_eval_caption(benches: argparse._SubParsersAction) -> None:
    s = benches.add_parser("caption", help="captions of held-out ShapesWorld scenes that name every object's colour "
                                           "and shape (vd's image -> text)")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="NAME|PATH", help="a system with captions (vd) or its folder")
    src.add_argument("--real", action="store_true", help="score the scenes' own captions (the ceiling)")
    s.add_argument("--n", type=int, default=100, help="scenes (default: 100)")
    s.add_argument("--steps", type=int, default=None, help="--model: sampler steps (default: the model's)")
    s.add_argument("--guidance", type=float, default=None, help="--model: guidance scale (default: the model's)")
    s.add_argument("--device", default="cpu", help="--model: torch device")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", metavar="FILE", help="write the result as JSON")
    s.set_defaults(func=_run_eval_caption, system=None)


def _run_eval_caption(args: argparse.Namespace) -> int:
    import json

    from t2i.eval.caption import caption_score, system_captioner, truth_captioner

    if args.n < 1:
        raise UsageError(f"--n must be at least 1, got {args.n}")
    captioner = truth_captioner() if args.real else system_captioner(_text_flow_system(args, "caption"), args.seed,
                                                                    args.steps, args.guidance)
    try:
        score = caption_score(captioner, args.n)
    except ValueError as e:
        raise UsageError(str(e).splitlines()[0]) from None
    print(f"captions naming every object's colour and shape: {score:.3f} ({args.n} held-out scenes)")
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps({"model": args.model or "real", "n": args.n, "score": score}, indent=2) + "\n")
    return 0


def _add_eval_flows(benches: argparse._SubParsersAction) -> None:
    s = benches.add_parser("flows", help="variation flows of held-out scenes, scored by the detector: image "
                                         "variations (vd, unclip), text variations and dual guidance over mix (vd)")
    s.add_argument("--model", metavar="NAME|PATH", required=True, help="a system with variations or its folder")
    s.add_argument("--n", type=int, default=50, help="source scenes per measure (default: 50; mix: n / 2 pairs)")
    s.add_argument("--seed", type=int, default=0, help="sampling seed of the first case (case i: seed + i)")
    s.add_argument("--json", metavar="FILE", help="write the result as JSON")
    s.set_defaults(func=_run_eval_flows)


def _run_eval_flows(args: argparse.Namespace) -> int:
    import json

    from t2i.api import load
    from t2i.eval import flows

    if args.n < 2:
        raise UsageError(f"--n must be at least 2, got {args.n}")
    try:
        system = load(args.model)
    except (ValueError, OSError, KeyError) as e:
        raise UsageError(str(e).splitlines()[0] if str(e) else repr(e)) from None
    if not callable(getattr(system, "vary", None)):
        raise UsageError(f"'{args.model}' has no image variations (vd and unclip have)")
    out = {"model": args.model, "n": args.n}
    out["vary"] = flows.variation_score(lambda image, i: system.vary(image, 2, seed=args.seed + i), args.n)
    print(f"image variations keeping the source's objects: {out['vary']['kept']:.3f} "
          f"(mean pixel change {out['vary']['pixel_change']:.1f}/255)")
    if getattr(system, "text_vae", None) is not None:
        from t2i.eval.caption import held_out_captions, reconstruction_accuracy

        out["text_vae_exact"] = reconstruction_accuracy(system.text_vae, system.clip.tokenizer,
                                                        held_out_captions(max(args.n, 100)))
        print(f"text VAE exact-match reconstruction of held-out captions: {out['text_vae_exact']:.3f}")
    if callable(getattr(system, "vary_text", None)):
        out["vary_text"] = flows.text_variation_score(lambda c, i: system.vary_text(c, 1, seed=args.seed + i), args.n)
        print(f"text variations keeping the caption's objects: {out['vary_text']['kept']:.3f} "
              f"(reworded {out['vary_text']['reworded']:.2f})")
    if callable(getattr(system, "mix", None)):
        out["mix"] = flows.mix_table(lambda p, image, m, i: system.mix(p, image, m, seed=args.seed + i)[0],
                                     n=max(args.n // 2, 1))
        print(flows.format_mix_table(out["mix"]))
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(out, indent=2) + "\n")
    return 0


def _add_eval_clip(benches: argparse._SubParsersAction) -> None:
    s = benches.add_parser("clip", help="zero-shot text -> image retrieval of a ShapesWorld CLIP on held-out scenes")
    s.add_argument("--model", metavar="RUN|PATH", required=True,
                   help="a `t2i train` clip run or checkpoint folder, or a system folder with a CLIP (vd, unclip)")
    s.add_argument("--candidates", type=int, default=100, help="images each caption picks from (default: 100)")
    s.add_argument("--groups", type=int, default=5, help="groups of candidates averaged (default: 5)")
    s.set_defaults(func=_run_eval_clip)


def _run_eval_clip(args: argparse.Namespace) -> int:
    from pathlib import Path

    from t2i.eval.retrieval import text_to_image_top1

    try:
        if (Path(args.model) / "system.json").is_file():
            from t2i.api import load

            clip = load(args.model).clip
        else:
            from t2i.train.stages.prior import frozen_clip

            clip = frozen_clip(args.model)
        result = text_to_image_top1(clip, args.candidates, args.groups)
    except (ValueError, OSError, KeyError, AttributeError) as e:
        raise UsageError(str(e).splitlines()[0] if str(e) else repr(e)) from None
    print(f"text -> image top-1 among {args.candidates}: {result['top1']:.3f} ({args.groups} groups of held-out scenes)")
    return 0


def _model_settings(args: argparse.Namespace):
    """The eval commands' sampling options (ModelSettings checks them)."""
    from t2i.eval.run import ModelSettings

    try:
        return ModelSettings(steps=args.steps, sampler=args.sampler, guidance=args.guidance, device=args.device,
                             precision=getattr(args, "precision", "fp32"))
    except ValueError as e:
        raise _flagged(e) from None


def _run_eval_inpaint(args: argparse.Namespace) -> int:
    import json

    from t2i.api import inpaint_generator
    from t2i.eval.inpaint import evaluate_inpaint

    settings = _model_settings(args)
    if args.n < 1:
        raise UsageError(f"--n must be at least 1, got {args.n}")
    try:
        result = evaluate_inpaint(inpaint_generator(args.model, settings), n=args.n, seed=args.seed)
    except (ValueError, OSError) as e:
        raise UsageError(str(e).splitlines()[0]) from e
    print(f"InpaintEval ({result['suite']}, {args.n} cases): region accuracy {result['region_accuracy']:.3f}, "
          f"change outside the mask {result['outside_change_mean']:.2f}/255 mean, "
          f"{result['outside_change_max']:.2f}/255 worst case")
    if args.json:
        result["model"] = {"name": args.model, "steps": args.steps, "sampler": args.sampler, "guidance": args.guidance,
                           "seed": args.seed}
        with open(args.json, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
    return 0


def _run_eval_shapes(args: argparse.Namespace) -> int:
    from t2i.api import model_generator
    from t2i.eval.run import ShapesJob, run_eval_shapes

    settings = _model_settings(args)
    try:
        job = ShapesJob(real=args.real, images=args.images, model=args.model, n_per_prompt=args.n_per_prompt,
                        size=args.size, seed=args.seed, json_path=args.json, prompts_path=args.prompts)
        run_eval_shapes(job, settings, model_generator)
    except (ValueError, OSError) as e:
        raise UsageError(str(e)) from e
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one stage of a system from a recipe (TOML)",
                       description="Train a recipe: a bundled name (see --list) or a .toml path. Writes "
                                   "OUT/checkpoints/, OUT/metrics.jsonl and OUT/samples/. Multi-GPU: "
                                   "torchrun --nproc_per_node N -m t2i.cli train ...")
    p.add_argument("recipe", nargs="?", help="recipe name or path")
    p.add_argument("--out", help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint in OUT")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after M minutes")
    p.add_argument("--until-step", type=int, default=None, metavar="N",
                   help="stop (with a checkpoint) at step N; the LR schedule still spans [train] steps, so "
                        "a run stopped early by --max-minutes is rerun exactly with --until-step")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--list", action="store_true", help="list the bundled recipes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from t2i.train.config import RecipeError
    from t2i.train.run import list_recipes, run_train

    if args.list:
        print(list_recipes())
        return 0
    if not args.recipe or not args.out:
        raise UsageError("give a RECIPE and --out DIR (or --list)")
    try:
        return run_train(args.recipe, args.out, resume=args.resume, max_minutes=args.max_minutes,
                         until_step=args.until_step, overrides=args.set, progress=not args.no_progress)
    except RecipeError as e:
        raise UsageError(str(e)) from e


def _generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="what to draw")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--system", default="ldm", help="a named system with shipped weights (default: ldm)")
    src.add_argument("--model", metavar="PATH", help="a t2i folder, a diffusers folder or a single-file .safetensors")
    p.add_argument("--config", metavar="DIR", help="single-file checkpoints: the folder with its tokenizer/")
    p.add_argument("-n", "--num-images", type=int, default=1, metavar="N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--sampler", default=None, help="ddim, ddpm, euler, euler_a, heun, dpmpp_2m (default: the model's)")
    p.add_argument("--guidance", type=float, default=None,
                   help="guidance scale of --guidance-type: classifier-free (<= 1 runs without guidance) or "
                        "of the guide's gradient (0: none) (default: the model's)")
    p.add_argument("--guidance-type", choices=GUIDANCE_TYPES, default="cfg",
                   help="GLIDE: cfg (classifier-free), clip (noisy-CLIP gradient) or classifier (noise-aware "
                        "classifier gradient); the guide is the model folder's guide_<type>/ unless --guide")
    p.add_argument("--guide", metavar="PATH", help="GLIDE --guidance-type clip|classifier: a guide folder or a "
                                                   "`t2i train` clip / classifier run")
    p.add_argument("--negative", default="", metavar="TEXT", help="negative prompt")
    p.add_argument("--threshold", default=None, metavar="KIND",
                   help="x0 thresholding: none, static[:limit] (clip to [-limit, limit]) or dynamic[:p] (Imagen: "
                        "the p-quantile of |x0| per image; p <= 1 is a fraction, p > 1 a percentage: dynamic:0.995 == "
                        "dynamic:99.5) (default: the model's)")
    p.add_argument("--aug-level", type=float, default=None, metavar="L",
                   help="super-resolution stages: the low-res image's noise augmentation level in [0, 1], a "
                        "fraction of the timesteps (default: the model's)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--out", default="t2i.png", metavar="FILE|DIR/",
                   help="FILE.png, FILE.jpg or FILE.jpeg (no suffix: FILE.png; another suffix is refused); an existing "
                        "directory or a path ending in / gets t2i.png inside it; with -n > 1: FILE-0.png ... and "
                        "FILE-grid.png (up to 64 images). Written atomically; checked before the model runs "
                        "(default: t2i.png)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (checked before loading)")
    p.add_argument("--batch-size", type=int, default=8, metavar="B",
                   help="images sampled at once; more run in chunks of B, so memory stays flat (default: 8)")
    p.add_argument("--max-pixels", type=int, default=2048 * 2048, metavar="P",
                   help="largest width x height to make (default: 2048x2048)")
    p.add_argument("--max-input-pixels", type=int, default=4096 * 4096, metavar="P",
                   help="largest --image / --mask, checked before decoding (default: 4096x4096)")
    p.add_argument("--max-images", type=int, default=1000, metavar="N", help="most images per command (default: 1000)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (exact), bf16 autocast, or auto: bf16 where the CPU/GPU does it natively (faster)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="text to image")
    _generation_args(p)
    p.add_argument("--image", metavar="FILE", help="init image (img2img; with --mask, inpainting)")
    p.add_argument("--mask", metavar="FILE", help="inpainting mask, white = repaint (needs --image)")
    p.add_argument("--strength", type=float, default=None, help="how much of the init image to redraw, (0, 1]")
    p.add_argument("--mix", type=float, default=None, metavar="M",
                   help="dual guidance (vd): the prompt's weight in [0, 1] against --image's (0: the image's variation)")
    p.add_argument("--feather", type=float, default=0.0, metavar="PX",
                   help="with --mask: fade the repainted region in over PX pixels inside the mask's edge")
    p.add_argument("--control", action="append", metavar="FILE", help="a control image (a ControlNet system, "
                   "e.g. --system controlnet); repeat for several controls at once; an empty prompt is guess mode")
    p.add_argument("--control-type", action="append", metavar="KIND",
                   help="each --control's kind: edges, segmentation, scribble, ... (default: the system's only one)")
    p.add_argument("--control-scale", action="append", type=float, metavar="S",
                   help="each --control's strength (one for all, or one per --control; default: 1)")
    p.set_defaults(func=_run_generate)


def _add_annotate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("annotate", help="an image's control map (edges, segmentation, scribble) for a ControlNet")
    p.add_argument("kind", choices=("edges", "segmentation", "scribble"), metavar="KIND",
                   help="edges (Canny), segmentation (a colour per shape class) or scribble")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--out", default="control.png", metavar="FILE", help="PNG path (default: control.png)")
    p.add_argument("--seed", type=int, default=0, help="scribble: the wobble's seed")
    p.set_defaults(func=_run_annotate)


def _run_annotate(args: argparse.Namespace) -> int:
    from t2i.api import open_image
    from t2i.data.annotate import annotate

    try:
        image = open_image(args.image, "image")
        annotate(image, args.kind, args.seed).save(args.out)
    except (ValueError, OSError) as e:
        raise UsageError(str(e).splitlines()[0]) from None
    print(f"wrote {args.out}")
    return 0


def _add_img2img(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("img2img", help="redraw an image guided by a prompt (SDEdit)")
    _generation_args(p)
    p.add_argument("--image", metavar="FILE", required=True, help="init image")
    p.add_argument("--strength", type=float, default=0.75, help="how much to redraw, (0, 1]")
    p.set_defaults(func=_run_generate, mask=None)


def _add_inpaint(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inpaint", help="repaint the masked part of an image")
    _generation_args(p)
    p.add_argument("--image", metavar="FILE", required=True, help="init image")
    p.add_argument("--mask", metavar="FILE", required=True, help="mask of the same size, white = repaint")
    p.add_argument("--strength", type=float, default=1.0, help="how much of the masked part to redraw, (0, 1]")
    p.add_argument("--feather", type=float, default=0.0, metavar="PX",
                   help="fade the repainted region in over PX pixels inside the mask's edge (pixels outside the "
                        "mask are always the image's own)")
    p.set_defaults(func=_run_generate)


def _unclip_args(p: argparse.ArgumentParser, out: str) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--system", default="unclip", help="a named system that makes variations (default: unclip)")
    src.add_argument("--model", metavar="PATH", help="a t2i unclip folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (checked before loading)")
    p.add_argument("--max-input-pixels", type=int, default=4096 * 4096, metavar="P",
                   help="largest input image, checked before decoding (default: 4096x4096)")
    p.add_argument("--out", default=out, metavar="FILE", help=f"PNG path (default: {out})")


def _add_vary(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vary", help="variations of an image (unCLIP: its CLIP image embedding decoded anew; "
                                       "vd: the image flow over its CLIP image tokens)")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("-n", "--num-images", type=int, default=4, metavar="N", help="variations (default: 4)")
    p.add_argument("--toward", metavar="TEXT", help="a text diff: move the image's embedding toward this caption")
    p.add_argument("--amount", type=float, default=0.5, metavar="A", help="how far --toward goes, [0, 1] (default 0.5)")
    p.add_argument("--source", default="", metavar="TEXT", help="with --toward: a caption of the image (default: none)")
    _unclip_args(p, "vary.png")
    p.set_defaults(func=_run_vary)


def _add_interpolate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("interpolate", help="images between two images (unCLIP: slerp of their CLIP embeddings), "
                                           "written as a strip PNG and an animated GIF beside it")
    p.add_argument("image_a", metavar="IMAGE_A")
    p.add_argument("image_b", metavar="IMAGE_B")
    p.add_argument("--frames", type=int, default=8, help="frames from A to B, at least 2 (default: 8)")
    _unclip_args(p, "interpolate.png")
    p.set_defaults(func=_run_interpolate)


def _unclip_inputs(args: argparse.Namespace, names: list[str], n: int):
    """(output paths, grid path, the images read, the system loaded) of `vary` / `interpolate`; one-line errors."""
    from t2i.api import check_device, load, open_image, output_plan

    try:
        paths, grid = output_plan(args.out, n)
        images = [open_image(getattr(args, name), name.replace("_", " "), args.max_input_pixels) for name in names]
        check_device(args.device)
        system = load(args.model or args.system, device=args.device)
    except (ValueError, OSError, KeyError) as e:
        raise UsageError(str(e).splitlines()[0] if str(e) else repr(e)) from None
    if not (hasattr(system, "supports") and system.supports("vary")):
        raise UsageError(f"'{args.model or args.system}' does not make variations (an unclip or vd system does)")
    return paths, grid, images, system


def _run_vary(args: argparse.Namespace) -> int:
    from t2i.io.images import image_grid, save_png

    if args.num_images < 1:
        raise UsageError(f"-n {args.num_images}: must be at least 1")
    paths, grid, (image,), system = _unclip_inputs(args, ["image"], args.num_images)
    if args.toward and "toward" not in inspect.signature(system.vary).parameters:
        raise UsageError(f"'{system.name}' makes variations without --toward (an unclip system takes it)")
    text_diff = dict(toward=args.toward, amount=args.amount, source=args.source) if args.toward else {}
    try:
        images = system.vary(image, args.num_images, seed=args.seed, **text_diff)
    except ValueError as e:
        raise UsageError(str(e).splitlines()[0]) from None
    meta = {"model": system.name, "seed": str(args.seed), "mode": "vary", "source_image": str(args.image),
            **({"toward": args.toward, "amount": str(args.amount)} if args.toward else {})}
    written = [save_png(im, path, {**meta, "batch_index": str(i)}) for i, (im, path) in enumerate(zip(images, paths))]
    written += [save_png(image_grid(images), grid, meta)] if grid is not None else []
    for path in written:
        print(f"wrote {path}")
    return 0


def _run_interpolate(args: argparse.Namespace) -> int:
    from t2i.io.images import image_grid, save_png

    if args.frames < 2:
        raise UsageError(f"--frames {args.frames}: must be at least 2")
    (strip,), _, images, system = _unclip_inputs(args, ["image_a", "image_b"], 1)
    try:
        frames = system.interpolate(*images, frames=args.frames, seed=args.seed)
    except ValueError as e:
        raise UsageError(str(e).splitlines()[0]) from None
    meta = {"model": system.name, "seed": str(args.seed), "mode": "interpolate", "frames": str(args.frames)}
    save_png(image_grid(frames, columns=len(frames)), strip, meta)
    gif = strip.with_suffix(".gif")
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=200, loop=0)
    print(f"wrote {strip}\nwrote {gif}")
    return 0


def _add_text_flows(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("caption", help="captions of an image (vd: the text flow over its CLIP image tokens)")
    p.add_argument("image", metavar="IMAGE")
    _text_flow_args(p)
    p.set_defaults(func=_run_caption)
    p = sub.add_parser("vary-text", help="variations of a caption (vd: the text flow over its CLIP text tokens)")
    p.add_argument("caption", metavar="CAPTION")
    _text_flow_args(p)
    p.set_defaults(func=_run_vary_text)


def _text_flow_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--system", default="vd", help="a named system with text flows (default: vd)")
    src.add_argument("--model", metavar="PATH", help="a t2i vd folder")
    p.add_argument("-n", type=int, default=1, metavar="N", help="captions to write (default: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (checked before loading)")
    p.add_argument("--max-input-pixels", type=int, default=4096 * 4096, metavar="P",
                   help="largest input image, checked before decoding (default: 4096x4096)")


def _text_flow_system(args: argparse.Namespace, method: str):
    """The system of `caption` / `vary-text` / `eval caption`, checked to have the text flow `method`."""
    from t2i.api import check_device, load

    try:
        check_device(args.device)
        system = load(args.model or args.system, device=args.device)
    except (ValueError, OSError, KeyError) as e:
        raise UsageError(str(e).splitlines()[0] if str(e) else repr(e)) from None
    if not callable(getattr(system, method, None)):
        raise UsageError(f"'{args.model or args.system}' has no {method.replace('_', '-')} flow (a vd system has)")
    return system


def _print_texts(make) -> int:
    """Run a text flow and print its captions, one a line; a ValueError is a one-line usage error."""
    try:
        texts = make()
    except ValueError as e:
        raise UsageError(str(e).splitlines()[0]) from None
    for text in texts:
        print(text)
    return 0


def _run_caption(args: argparse.Namespace) -> int:
    from t2i.api import open_image

    if args.n < 1:
        raise UsageError(f"-n {args.n}: must be at least 1")
    try:
        image = open_image(args.image, "image", args.max_input_pixels)
    except (ValueError, OSError) as e:
        raise UsageError(str(e).splitlines()[0]) from None
    system = _text_flow_system(args, "caption")
    return _print_texts(lambda: system.caption(image, args.n, seed=args.seed, steps=args.steps,
                                               guidance=args.guidance))


def _run_vary_text(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise UsageError(f"-n {args.n}: must be at least 1")
    if not args.caption.strip():
        raise UsageError("the caption is empty: give the text to vary")
    system = _text_flow_system(args, "vary_text")
    return _print_texts(lambda: system.vary_text(args.caption, args.n, seed=args.seed, steps=args.steps,
                                                 guidance=args.guidance))


# The flag of each GenerationRequest field a one-line error may name first.
FLAGS = {"steps": "--steps", "num_images": "-n", "seed": "--seed", "guidance": "--guidance", "width": "--width",
         "height": "--height", "strength": "--strength", "precision": "--precision", "feather": "--feather",
         "batch_size": "--batch-size", "max_pixels": "--max-pixels", "max_input_pixels": "--max-input-pixels",
         "max_images": "--max-images", "control_type": "--control-type", "control_scale": "--control-scale",
         "control": "--control", "threshold": "--threshold", "aug_level": "--aug-level", "mix": "--mix"}


def _flagged(e: Exception) -> UsageError:
    """A request's one-line ValueError as a usage error that names the flag (`steps must ...` -> `--steps must`)."""
    msg = str(e).splitlines()[0] if str(e) else repr(e)
    field = msg.split(" ", 1)[0]
    return UsageError(FLAGS[field] + msg[len(field):] if field in FLAGS else msg)


def _request(args: argparse.Namespace):
    """The GenerationRequest of a generate / img2img / inpaint command line, checked before any model work."""
    from t2i.api import open_image
    from t2i.systems.request import GenerationRequest, RequestLimits

    if args.mask is not None and args.image is None:
        raise UsageError("--mask needs an --image to inpaint")
    if args.guide is not None and args.guidance_type == "cfg":
        raise UsageError("--guide needs --guidance-type clip or classifier")
    if args.guide is not None and not os.path.exists(args.guide):
        raise UsageError(f"--guide '{args.guide}': no such folder")
    try:
        limits = RequestLimits(max_pixels=args.max_pixels, max_input_pixels=args.max_input_pixels,
                               max_images=args.max_images)
    except ValueError as e:
        raise _flagged(e) from None
    try:
        image = open_image(args.image, "init image", limits.max_input_pixels) if args.image else None
        mask = open_image(args.mask, "mask", limits.max_input_pixels) if args.mask else None
        controls = [open_image(c, "control image", limits.max_input_pixels) for c in getattr(args, "control", None) or []]
    except ValueError as e:
        raise UsageError(str(e)) from None
    strength = args.strength if args.strength is not None else (0.75 if args.mask is None else 1.0)
    try:
        return GenerationRequest(
            prompts=args.prompt, negative_prompt=args.negative, num_images=args.num_images, seed=args.seed,
            steps=args.steps, sampler=args.sampler, guidance=args.guidance, guidance_type=args.guidance_type,
            threshold=args.threshold, aug_level=args.aug_level, width=args.width, height=args.height, image=image, mask=mask,
            strength=strength if image is not None else 1.0, precision=args.precision, progress=not args.no_progress,
            feather=getattr(args, "feather", 0.0), batch_size=args.batch_size, limits=limits,
            control=controls or None, control_type=getattr(args, "control_type", None),
            control_scale=getattr(args, "control_scale", None) or 1.0, mix=getattr(args, "mix", None))
    except ValueError as e:
        raise _flagged(e) from None


def _run_generate(args: argparse.Namespace) -> int:
    from t2i.api import check_device, generate_files, load, load_guide, output_plan

    request = _request(args)
    try:
        output_plan(args.out, len(request.batch))  # before any model work: a bad --out loses nothing
        check_device(args.device)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.model is not None and not os.path.exists(args.model):
        raise UsageError(f"--model '{args.model}': no such file or folder")
    try:
        system = load(args.model or args.system, device=args.device, config_dir=args.config)
    except (ValueError, OSError, KeyError) as e:
        msg = str(e) if args.model is None else f"cannot load model '{args.model}': {e}"
        raise UsageError(msg.splitlines()[0] if msg else repr(e)) from None
    try:
        system.check(request)  # what it supports: the capability and the guidance type
        if args.guide is not None:
            request = request.of(request, guide=load_guide(args.guide, args.guidance_type))
    except (ValueError, OSError, KeyError) as e:
        raise UsageError(str(e).splitlines()[0] if str(e) else repr(e)) from None
    try:
        paths = generate_files(system, request, args.out)
    except ValueError as e:
        raise _flagged(e) from None
    for path in paths:
        print(f"wrote {path}")
    return 0


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a model between t2i, diffusers and single-file layouts")
    p.add_argument("src", nargs="+", help="a t2i folder, a diffusers folder, a single-file .safetensors or a `t2i "
                   "train` run (a noise-aware clip or classifier run becomes a GLIDE guide folder, e.g. "
                   "GLIDE_FOLDER/guide_clip); several controlnet runs (one control kind each) make one ControlNet "
                   "system, e.g. t2i/weights/controlnet; DeepFloyd IF's stage I then stage II diffusers folders "
                   "make one Imagen cascade")
    p.add_argument("dst", help="where to write it (a new folder, or a .safetensors file for --to single-file)")
    p.add_argument("--to", choices=("t2i", "diffusers", "single-file"), default=None,
                   help="target layout (default: diffusers for a t2i folder, t2i otherwise)")
    p.add_argument("--config", metavar="DIR", help="single-file sources: the folder with its tokenizer/")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="weights of a t2i folder (--to t2i) are stored in this type")
    p.add_argument("--step", type=int, metavar="N", help="training runs: their checkpoint of step N, not the newest")
    p.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from t2i.api import convert

    try:
        out = convert(args.src, args.dst, args.to, args.config, args.dtype, args.step)
    except (ValueError, OSError, KeyError) as e:
        raise UsageError(str(e).splitlines()[0] if str(e) else repr(e)) from None
    print(f"wrote {out}")
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="an HTTP service: OpenAI's images API, a job queue and a page at /",
                       description="Serve systems over OpenAI's images API (the openai client works with "
                                   "base_url=http://HOST:PORT/v1) and a page at http://HOST:PORT/ (t2i.serve).")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--systems", default="ldm", help="comma-separated system names (default: ldm)")
    p.add_argument("--api-key", default=os.environ.get("T2I_API_KEY"), metavar="K",
                   help="require 'Authorization: Bearer K' (default: $T2I_API_KEY; none: no key)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--queue-size", type=int, default=8, metavar="N", help="jobs waiting per system before 429")
    p.add_argument("--max-body-mb", type=float, default=8.0, help="largest request body (413 above)")
    p.add_argument("--max-image-mb", type=float, default=4.0, help="largest uploaded image (413 above)")
    p.add_argument("--max-side", type=int, default=512, help="largest width or height asked or uploaded, px")
    p.add_argument("--max-n", type=int, default=8, help="most images per request")
    p.add_argument("--max-steps", type=int, default=150, help="most sampler steps per request")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: tiny random systems (t2i.serve.tiny)
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from t2i.serve import Limits, Listen, serve

    limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20), max_image_bytes=int(args.max_image_mb * 2**20),
                    max_side=args.max_side, max_n=args.max_n, max_steps=args.max_steps)
    try:
        serve([s.strip() for s in args.systems.split(",") if s.strip()],
              Listen(host=args.host, port=args.port, api_key=args.api_key or None), limits=limits,
              max_waiting=args.queue_size, device=args.device, tiny=args.tiny)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t2i", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_generate(sub)
    _add_annotate(sub)
    _add_img2img(sub)
    _add_inpaint(sub)
    _add_vary(sub)
    _add_text_flows(sub)
    _add_interpolate(sub)
    _add_convert(sub)
    _add_serve(sub)
    return parser


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    import warnings

    args = build_parser().parse_args(argv)

    def one_line(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"t2i {args.command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line
            return int(args.func(args) or 0)
    except UsageError as e:
        print(f"t2i {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
