"""Training throughput of the shipped recipes on this CPU: every arm side by side in one run.

Each arm is one `t2i train` loop (the Trainer: data, forward, backward, AdamW, EMA) of a recipe with
a few `--set` overrides, run in its own process (clean peak RSS, clean compile caches, its own thread
count). After `--warmup` steps, `--steps` steps are timed from metrics.jsonl; the table gives images/s,
seconds per step, peak RSS and the ratio to the better of plain fp32 and plain bf16 autocast (the
settings before this benchmark). The default recipes use the winning arm (`bf16 = "auto"`,
`channels_last`, fused AdamW).

    .venv/bin/python benchmarks/train_throughput.py                    # all arms (~10 min on 2 cores)
    .venv/bin/python benchmarks/train_throughput.py --arms ldm_fp32,ldm_best --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# The shipped LDM recipe on the shipped autoencoder (so it runs on a clean clone), 64 px -> 16x16x4 latents.
LDM = ["data.length=100000", "diffusion.first_stage='ldm'", "diffusion.latent_scale=0.0", "train.sample_every=0",
       "train.checkpoint_every=100000", "train.log_every=1", "diffusion.num_samples=1", "diffusion.sample_steps=1"]
OLD = ["train.channels_last=false", "train.compile=false", "train.fused_adamw=false", "train.fp32_attention=false"]
PLAIN = ["train.bf16=false"] + OLD  # the settings before this benchmark
BF16 = ["train.bf16=true"] + OLD
BEST: list[str] = []  # the recipe's defaults
PIXEL = ["data.size=32", "data.length=100000", "train.sample_every=0", "train.checkpoint_every=100000",
         "train.log_every=1", "diffusion.num_samples=1", "diffusion.sample_steps=1", "train.batch_size=64"]

# arm -> (recipe, overrides, threads (0: torch's default), what it tests)
ARMS: dict[str, tuple[str, list[str], int, str]] = {
    "ldm_fp32": ("shapes_ldm", LDM + PLAIN, 0, "fp32 eager (before)"),
    "ldm_bf16": ("shapes_ldm", LDM + BF16, 0, "bf16 autocast eager (before: the shipped recipe)"),
    "ldm_fp32_cl": ("shapes_ldm", LDM + PLAIN + ["train.channels_last=true"], 0, "fp32 + channels_last"),
    "ldm_bf16_cl": ("shapes_ldm", LDM + BF16 + ["train.channels_last=true"], 0, "bf16 + channels_last"),
    "ldm_bf16_fused": ("shapes_ldm", LDM + BF16 + ["train.fused_adamw=true"], 0, "bf16 + fused AdamW"),
    "ldm_bf16_attn32": ("shapes_ldm", LDM + BF16 + ["train.fp32_attention=true"], 0, "bf16 + float32 attention"),
    "ldm_bf16_compile": ("shapes_ldm", LDM + BF16 + ["train.compile=true"], 0, "bf16 + torch.compile"),
    "ldm_best": ("shapes_ldm", LDM + BEST, 0, "recipe default (auto precision, float32 attention, fused AdamW)"),
    "ldm_best_compile": ("shapes_ldm", LDM + BEST + ["train.compile=true"], 0, "recipe default + torch.compile"),
    "ldm_best_1thread": ("shapes_ldm", LDM + BEST, 1, "recipe default, 1 thread"),
    "ldm_best_workers0": ("shapes_ldm", LDM + BEST + ["data.num_workers=0"], 0,
                          "recipe default, data rendered in the training process"),
    "ldm_best_b32": ("shapes_ldm", LDM + BEST + ["train.batch_size=32"], 0, "recipe default, batch 32"),
    "ldm_best_b128": ("shapes_ldm", LDM + BEST + ["train.batch_size=128"], 0, "recipe default, batch 128"),
    "ldm_diffusers_bf16": ("shapes_ldm", LDM + BF16 + ["diffusion.network='diffusers_peer'"], 0,
                           "diffusers UNet2DConditionModel of the same config, bf16 (peer)"),
    "ldm_diffusers_best": ("shapes_ldm", LDM + BEST + ["diffusion.network='diffusers_peer'"], 0,
                           "diffusers UNet2DConditionModel, recipe default (peer)"),
    "pixel32_fp32": ("shapes_glide_gpu", PIXEL + PLAIN, 0, "32 px pixel UNet, fp32 (before)"),
    "pixel32_bf16": ("shapes_glide_gpu", PIXEL + BF16, 0, "32 px pixel UNet, bf16 (before)"),
    "pixel32_best": ("shapes_glide_gpu", PIXEL + BEST, 0, "32 px pixel UNet, recipe default"),
}


def register_diffusers_peer() -> None:
    """NETWORKS['diffusers_peer']: diffusers' UNet2DConditionModel built from the recipe's t2i UNet config."""
    from diffusers import UNet2DConditionModel

    from t2i.io.diffusers_unet import unet_config_to_diffusers
    from t2i.nn.unet import UNetConfig
    from t2i.train import NETWORKS

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_step import DiffusersNet

    class PooledDiffusersNet(DiffusersNet):
        def forward(self, x, t, *, context=None, context_mask=None, pooled=None):
            return self.unet(x, t, encoder_hidden_states=context, encoder_attention_mask=context_mask,
                             class_labels=pooled, return_dict=False)[0]

    def build(net: dict):
        cfg = UNetConfig.from_dict({**net, "pooled_mlp": True})
        kwargs = {k: v for k, v in unet_config_to_diffusers(cfg).items() if not k.startswith("_")}
        model = PooledDiffusersNet(UNet2DConditionModel(**kwargs))
        model.config = cfg  # what the stage reads (in_channels)
        return model

    NETWORKS.add("diffusers_peer", build)


def run_arm(name: str, warmup: int, steps: int) -> dict:
    """Train one arm in this process; images/s and s/step of the timed steps, peak RSS."""
    from t2i.train import Trainer, load_recipe

    recipe_name, overrides, threads, _ = ARMS[name]
    if threads:
        torch.set_num_threads(threads)
    if "diffusers_peer" in " ".join(overrides):
        register_diffusers_peer()
    recipe = load_recipe(recipe_name, overrides + [f"train.steps={warmup + steps}"])
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(recipe, out, progress=False, log=lambda m: None)
        t0 = time.monotonic()
        trainer.run()
        total = time.monotonic() - t0
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        bf16 = trainer.bf16
    elapsed = {r["step"]: r["elapsed_s"] for r in rows}
    dt = elapsed[warmup + steps] - elapsed[warmup]
    batch = recipe.train.batch_size
    return {"arm": name, "images_per_s": steps * batch / dt, "s_per_step": dt / steps, "batch": batch,
            "bf16": bf16, "threads": torch.get_num_threads(), "wall_s": total,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", default=",".join(ARMS), help="comma list of: " + ", ".join(ARMS))
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per arm")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one arm, print its row as JSON
    args = p.parse_args(argv)
    if args.one:
        print("ROW " + json.dumps(run_arm(args.one, args.warmup, args.steps)), flush=True)
        return 0
    names = [n for n in args.arms.split(",") if n]
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        p.error(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    from t2i.nn.precision import cpu_description

    rows = []
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--one", name, "--warmup", str(args.warmup),
                               "--steps", str(args.steps)], capture_output=True, text=True, env=os.environ.copy())
        row = next((json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")), None)
        if row is None:
            print(f"# {name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(row)
        print(f"# {name}: {row['images_per_s']:.1f} images/s", file=sys.stderr, flush=True)
    print(f"\ntorch {torch.__version__}, CPU: {cpu_description()}, {os.cpu_count()} cores; "
          f"{args.warmup} warm-up + {args.steps} timed steps per arm\n")
    print("| arm | what | batch | threads | bf16 | images/s | s/step | peak RSS MB | vs before |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|")
    before: dict[str, float] = {}
    for r in rows:
        family = r["arm"].split("_")[0]
        if r["arm"] in (f"{family}_fp32", f"{family}_bf16"):
            before[family] = max(before.get(family, 0.0), r["images_per_s"])
    for r in rows:
        base = before.get(r["arm"].split("_")[0])
        ratio = f"{r['images_per_s'] / base:.2f}x" if base else ""
        print(f"| {r['arm']} | {ARMS[r['arm']][3]} | {r['batch']} | {r['threads']} | {r['bf16']} | "
              f"{r['images_per_s']:.1f} | {r['s_per_step']:.2f} | {r['peak_rss_mb']:.0f} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
