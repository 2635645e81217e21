"""Measure an autoencoder run's latent scale: 1 / std of its latents over its own training data.

LDM (Rombach et al. 2022, sec. 4.3.2) rescales the first stage's latents to unit variance before
diffusion; a diffusion recipe takes the measured value as `[diffusion] latent_scale`.
    python -m t2i.train.latent_scale runs/shapes_autoencoder [--images 512]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


@torch.no_grad()
def measure_latent_scale(run: str | Path, images: int = 512, batch: int = 64) -> float:
    """1 / std of posterior samples z of `images` dataset items (the run's own [data] table, from item 0)."""
    from t2i.train.checkpoint import latest_checkpoint, read_checkpoint
    from t2i.train.data import build_dataset
    from t2i.train.recipe import DataConfig
    from t2i.train.stages.diffusion import load_first_stage

    run = Path(run)
    ckpt_path = run if (run / "manifest.json").is_file() else latest_checkpoint(run / "checkpoints")
    if ckpt_path is None:
        raise ValueError(f"{run}: no complete checkpoint")
    dataset = build_dataset(DataConfig.from_dict(read_checkpoint(ckpt_path).config["data"]))
    ae = load_first_stage(run, "cpu", latent_scale=1.0)
    g = torch.Generator().manual_seed(0)
    zs = []
    for lo in range(0, min(images, len(dataset)), batch):
        x = torch.stack([dataset[i][0] for i in range(lo, min(lo + batch, images, len(dataset)))])
        post = ae.encode(x)
        zs.append(post.mean + post.std * torch.randn(post.mean.shape, generator=g))
    return float(1.0 / torch.cat(zs).std())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="an autoencoder run folder (or checkpoint folder)")
    p.add_argument("--images", type=int, default=512, help="dataset items to encode")
    args = p.parse_args(argv)
    scale = measure_latent_scale(args.run, args.images)
    print(f"latent std {1 / scale:.4f}: set [diffusion] latent_scale = {scale:.5f}")


if __name__ == "__main__":
    main()
