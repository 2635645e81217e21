"""The ShapesEval ceiling an LDM inherits from its autoencoder: ground-truth renders of the suite,
encoded and decoded (posterior mean), then scored. A latent model cannot beat what its decoder draws.

Usage: python benchmarks/autoencoder_ceiling.py AUTOENCODER [--n-per-prompt 4]
AUTOENCODER is an autoencoder training run (or checkpoint) folder, or a t2i LDM system folder / name.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from t2i.data.transforms import to_pil, to_tensor
from t2i.eval.shapeseval import ground_truth_images, markdown_table, score


def load_autoencoder(source: str) -> torch.nn.Module:
    path = Path(source)
    if (path / "checkpoints").is_dir() or (path / "manifest.json").is_file():
        from t2i.train.stages.diffusion import load_first_stage

        return load_first_stage(path, "cpu")
    import t2i

    return t2i.load(source).autoencoder.eval()


@torch.no_grad()
def round_trip(ae: torch.nn.Module, images: dict, batch: int = 64) -> dict:
    flat = [(i, im) for i, ims in images.items() for im in ims]
    out: dict = {i: [] for i in images}
    for lo in range(0, len(flat), batch):
        chunk = flat[lo:lo + batch]
        x = torch.stack([to_tensor(im) for _, im in chunk])  # (B, 3, H, W) in [-1, 1]
        recon = ae.decode(ae.encode(x).mode()).clamp(-1, 1)
        for (i, _), r in zip(chunk, recon):
            out[i].append(to_pil(r))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("autoencoder")
    p.add_argument("--n-per-prompt", type=int, default=4)
    args = p.parse_args()
    ae = load_autoencoder(args.autoencoder)
    t = time.perf_counter()
    real = ground_truth_images(args.n_per_prompt, 64)
    result = score(round_trip(ae, real), progress=False)
    print(markdown_table(result))
    print(f"({time.perf_counter() - t:.1f} s; ground truth without the round trip scores 1.000)")


if __name__ == "__main__":
    main()
