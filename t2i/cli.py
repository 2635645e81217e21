"""The `t2i` command: one verb per sub-command, each a thin call into the floors below."""

from __future__ import annotations

import argparse
import sys


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job of `make demo`")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from t2i.diffusion.toy import run_toy_demo

    run_toy_demo()
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score images or models on a benchmark")
    benches = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    s = benches.add_parser("shapes", help="ShapesEval: exact, detector-scored ShapesWorld prompts")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--real", action="store_true", help="score ground-truth renders (the ceiling)")
    src.add_argument("--images", metavar="DIR", help="score a folder of {prompt_index:04d}_{k}.png files")
    s.add_argument("--n-per-prompt", type=int, default=4, metavar="N", help="images per prompt (--real)")
    s.add_argument("--size", type=int, default=64, help="render size for --real (scoring is at 64 px)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", metavar="FILE", help="write the result as JSON")
    s.add_argument("--prompts", metavar="FILE", help="write the suite's prompts and specs as JSON lines")
    s.set_defaults(func=_run_eval_shapes)


def _run_eval_shapes(args: argparse.Namespace) -> int:
    from t2i.eval.run import run_eval_shapes

    try:
        run_eval_shapes(args.real, args.images, args.n_per_prompt, args.size, args.json, args.seed, args.prompts)
    except ValueError as e:
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
                         overrides=args.set, progress=not args.no_progress)
    except RecipeError as e:
        raise UsageError(str(e)) from e


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t2i", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _add_train(sub)
    _add_eval(sub)
    return parser


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"t2i {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
