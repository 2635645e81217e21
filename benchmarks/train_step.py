"""Training throughput (images/s) of a t2i UNet diffusion stage vs the same-size diffusers
UNet2DConditionModel trained in the same loop (t2i's Trainer), on the CPU.

Both runs use one recipe (tiny_pixel's text encoder, loss, AdamW, EMA, data) and differ only in
the network: t2i's UNet built from the diffusers model's config (same parameter count) or the
diffusers model behind a small adapter. Each variant trains `--steps` steps per repeat; runs
alternate which goes first; the median images/s of the loop (no setup, no final checkpoint) is
reported as a markdown table.

    .venv/bin/python benchmarks/train_step.py                        # tiny and small, 2 repeats
    .venv/bin/python benchmarks/train_step.py --configs small --steps 30 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from unet_step import CONFIGS as FORWARD_CONFIGS  # noqa: E402  (the forward benchmark's configs)

CONFIGS = {
    "tiny": FORWARD_CONFIGS["tiny"],
    "small": dict(  # a ShapesWorld-sized pixel model: two levels, cross-attention at both
        block_out_channels=(64, 128),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=32,
    ),
}


class DiffusersNet(nn.Module):
    """diffusers' UNet2DConditionModel called the way t2i calls a network: net(x, t, context=, context_mask=)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x, t, *, context=None, context_mask=None, pooled=None):
        return self.unet(x, t, encoder_hidden_states=context, encoder_attention_mask=context_mask, return_dict=False)[0]


def make_networks(name: str) -> tuple[nn.Module, nn.Module]:
    """(t2i UNet, adapted diffusers UNet) of the same architecture, for 3-channel pixels."""
    from diffusers import UNet2DConditionModel

    from t2i.io.diffusers_unet import unet_config_from_diffusers
    from t2i.nn.unet import UNet

    cfg = {k: v for k, v in CONFIGS[name].items() if k != "sample_size"}
    theirs = UNet2DConditionModel(in_channels=3, out_channels=3, sample_size=16, **cfg)
    ours = UNet(unet_config_from_diffusers(dict(theirs.config)))
    return ours, DiffusersNet(theirs)


def run(name: str, variant: str, steps: int, batch: int, size: int, bf16: bool) -> tuple[float, int]:
    """Train `steps` steps of one variant; (images/s of the loop, trainable parameters of the network)."""
    from t2i.train import NETWORKS, Trainer, load_recipe

    ours, theirs = make_networks(name)
    net = ours if variant == "t2i" else theirs
    key = f"bench_{variant}"
    NETWORKS.add(key, lambda table: net)
    width = CONFIGS[name]["cross_attention_dim"]
    recipe = load_recipe("tiny_pixel", [
        f"diffusion.network='{key}'", "diffusion.net={}", f"diffusion.text.width={width}",
        f"train.steps={steps}", f"train.batch_size={batch}", f"data.size={size}", f"train.bf16={str(bf16).lower()}",
        f"train.checkpoint_every={steps}", "train.log_every=1000", "diffusion.num_samples=1", "diffusion.sample_steps=1",
        f"data.length={max(batch * steps, 64)}",
    ])
    try:
        with tempfile.TemporaryDirectory() as out:
            result = Trainer(recipe, out, progress=False, log=lambda m: None).run()
    finally:
        NETWORKS.remove(key)
    return result.images_per_s, sum(p.numel() for p in net.parameters())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="tiny,small", help="comma list of: " + ", ".join(CONFIGS))
    p.add_argument("--steps", type=int, default=20, help="training steps per run")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=32, help="ShapesWorld image side (pixels)")
    p.add_argument("--repeats", type=int, default=2, help="runs per variant (median reported)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in args.configs.split(",") if n]
    bad = [n for n in names if n not in CONFIGS]
    if bad:
        p.error(f"unknown config(s) {bad}; choose from {list(CONFIGS)}")
    rows = []
    for name in names:
        rates: dict[str, list[float]] = {"t2i": [], "diffusers": []}
        params = {}
        for r in range(args.repeats):
            for variant in (["t2i", "diffusers"] if r % 2 == 0 else ["diffusers", "t2i"]):
                ips, params[variant] = run(name, variant, args.steps, args.batch, args.size, args.bf16)
                rates[variant].append(ips)
                print(f"# {name} {variant} repeat {r}: {ips:.1f} images/s", file=sys.stderr, flush=True)
        rows.append((name, params, {k: statistics.median(v) for k, v in rates.items()}))
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {args.batch}, "
          f"{args.size} px, {args.steps} steps/run, bf16 {args.bf16}\n")
    print("| config | params t2i | params diffusers | t2i img/s | diffusers img/s | t2i / diffusers |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, params, rate in rows:
        print(f"| {name} | {params['t2i'] / 1e6:.2f}M | {params['diffusers'] / 1e6:.2f}M | {rate['t2i']:.1f} | "
              f"{rate['diffusers']:.1f} | {rate['t2i'] / rate['diffusers']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
