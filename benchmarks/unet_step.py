"""Forward latency of the t2i UNet vs diffusers' UNet2DConditionModel at identical weights and inputs.

Both models live in one process; their calls are interleaved (alternating which goes first) and
the median of the repeats is reported, for a tiny config and a Stable-Diffusion-1.5-sized one
(random weights, batch 2, 64x64 latents, 77 context tokens), on the CPU and on CUDA when present,
eager and (where torch.compile works) compiled. Prints a markdown table; the ratio is
t2i time / diffusers time (below 1 = t2i faster).

    .venv/bin/python benchmarks/unet_step.py                       # CPU (+ CUDA if present)
    .venv/bin/python benchmarks/unet_step.py --configs sd15 --repeats 5 --compile none
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

CONFIGS = {
    "tiny": dict(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    ),
    "sd15": dict(  # Stable Diffusion 1.5's unet/config.json
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    ),
}
INPUTS = {"tiny": (2, 8, 5), "sd15": (2, 64, 77)}  # batch, latent side, context tokens


def build_pair(name: str, device: torch.device):
    """A random diffusers UNet and the t2i UNet holding exactly its weights, plus one set of inputs."""
    from diffusers import UNet2DConditionModel

    from t2i.io.diffusers_unet import from_diffusers, unet_config_from_diffusers
    from t2i.nn.unet import UNet

    torch.manual_seed(0)
    theirs = UNet2DConditionModel(in_channels=4, out_channels=4, **CONFIGS[name]).eval()
    with torch.no_grad():  # random everywhere (fresh diffusers models zero some convs)
        for p in theirs.parameters():
            p.normal_(0.0, 0.02)
    cfg = unet_config_from_diffusers(dict(theirs.config))
    ours = UNet(cfg).eval()
    ours.load_state_dict(from_diffusers(theirs.state_dict(), cfg))
    theirs.to(device)
    ours.to(device)
    b, side, tokens = INPUTS[name]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 4, side, side, generator=g).to(device)
    t = torch.tensor([999.0, 500.0][:b] + [10.0] * max(0, b - 2)).to(device)
    ctx = torch.randn(b, tokens, cfg.context_dim, generator=g).to(device)

    def run_theirs(m=theirs):
        return m(x, t, encoder_hidden_states=ctx, return_dict=False)[0]

    def run_ours(m=ours):
        return m(x, t, context=ctx)

    return theirs, ours, run_theirs, run_ours


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: list[Callable[[], torch.Tensor]], repeats: int, warmup: int, device: torch.device) -> list[float]:
    """Median seconds per call of each fn; calls alternate and the order flips every repeat."""
    times: list[list[float]] = [[] for _ in fns]
    with torch.inference_mode():
        for _ in range(warmup):
            for f in fns:
                f()
        _sync(device)
        for r in range(repeats):
            order = list(range(len(fns)))[:: 1 if r % 2 == 0 else -1]
            for i in order:
                _sync(device)
                t0 = time.perf_counter()
                fns[i]()
                _sync(device)
                times[i].append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def bench(name: str, device: torch.device, mode: str, repeats: int, warmup: int) -> dict:
    theirs, ours, run_theirs, run_ours = build_pair(name, device)
    with torch.inference_mode():
        diff = (run_theirs() - run_ours()).abs().max().item()
    if mode == "compiled":
        ct, co = torch.compile(theirs), torch.compile(ours)
        run_theirs_c = lambda: run_theirs(ct)  # noqa: E731
        run_ours_c = lambda: run_ours(co)  # noqa: E731
        fns = [run_theirs_c, run_ours_c]
    else:
        fns = [run_theirs, run_ours]
    t_theirs, t_ours = time_interleaved(fns, repeats, warmup, device)
    return dict(config=name, device=device.type, mode=mode, theirs=t_theirs, ours=t_ours, diff=diff)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="tiny,sd15", help="comma list of: " + ", ".join(CONFIGS))
    p.add_argument("--devices", default="auto", help="comma list of cpu,cuda; 'auto' = cpu (+ cuda if present)")
    p.add_argument("--compile", default="auto", choices=["auto", "all", "none"],
                   help="auto: compiled rows for every config on CUDA and for 'tiny' on the CPU")
    p.add_argument("--repeats", type=int, default=0, help="timed calls per model (0: 3 on CPU for sd15, else 20)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in args.configs.split(",") if n]
    bad = [n for n in names if n not in CONFIGS]
    if bad:
        p.error(f"unknown config(s) {bad}; choose from {list(CONFIGS)}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices == "auto" else args.devices.split(",")
    rows = []
    for dev in devices:
        device = torch.device(dev)
        for name in names:
            modes = ["eager"]
            if args.compile == "all" or (args.compile == "auto" and (dev == "cuda" or name == "tiny")):
                modes.append("compiled")
            for mode in modes:
                repeats = args.repeats or (3 if dev == "cpu" and name == "sd15" else 20)
                try:
                    row = bench(name, device, mode, repeats, args.warmup)
                except Exception as e:  # torch.compile can be unavailable (no compiler, unsupported op)
                    print(f"# {name} {dev} {mode}: skipped ({type(e).__name__}: {str(e).splitlines()[0][:120]})", file=sys.stderr)
                    continue
                rows.append(row)
                print(f"# {name} {dev} {mode}: diffusers {row['theirs'] * 1e3:.1f} ms, t2i {row['ours'] * 1e3:.1f} ms",
                      file=sys.stderr, flush=True)
    threads = torch.get_num_threads()
    print(f"\ntorch {torch.__version__}, {threads} CPU threads" +
          (f", {torch.cuda.get_device_name()}" if "cuda" in devices else "") + "\n")
    print("| config | device | mode | diffusers ms | t2i ms | t2i / diffusers | max abs diff |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['device']} | {r['mode']} | {r['theirs'] * 1e3:.1f} | {r['ours'] * 1e3:.1f} | "
              f"{r['ours'] / r['theirs']:.3f} | {r['diff']:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
