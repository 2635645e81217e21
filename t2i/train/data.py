"""Datasets by name, and the batch order: seeded, sharded over processes, resumable from a cursor.

The order of an epoch is a permutation drawn from (seed, epoch). A global micro-batch is the
next `global_micro` positions of that permutation; process `rank` takes its contiguous slice,
so 1 process x batch B and W processes x B/W see the same samples in the same slots. The
position (epoch, cursor) is all a checkpoint needs to continue the same sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from t2i.train.config import RecipeError
from t2i.train.recipe import DataConfig
from t2i.train.registry import DATASETS


@DATASETS.register("shapes")
def shapes_dataset(cfg: DataConfig) -> Dataset:
    """ShapesWorld (../shared/SHAPESWORLD.md) at cfg.size px, cfg.length samples of world cfg.seed."""
    from t2i.data.shapes import ShapesWorld

    if cfg.size < 16:
        raise RecipeError(f"[data] size = {cfg.size}: ShapesWorld images are at least 16 px")
    return ShapesWorld(size=cfg.size, seed=cfg.seed, length=cfg.length, caption_weights=cfg.caption_weights,
                       count_weights=cfg.object_counts or None)


@DATASETS.register("folder")
def folder_dataset(cfg: DataConfig) -> Dataset:
    """A folder of captioned images (metadata.jsonl or .txt sidecars), centre-cropped to cfg.size."""
    from t2i.data.folder import ImageFolderDataset

    if not cfg.path:
        raise RecipeError("[data] path is empty: a folder dataset needs path = \"DIR\"")
    if not Path(cfg.path).is_dir():
        raise RecipeError(f"[data] path = '{cfg.path}': no such directory")
    try:
        return ImageFolderDataset(cfg.path, cfg.size)
    except ValueError as e:
        raise RecipeError(f"[data] path = '{cfg.path}': {e}") from None


def build_dataset(cfg: DataConfig) -> Dataset:
    return DATASETS.get(cfg.dataset)(cfg)


@dataclass
class DataPosition:
    """Where the batch sequence stands: epoch and the next position in its permutation."""

    epoch: int = 0
    cursor: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch: a permutation fixed by (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


class ShardedBatches:
    """Index lists of global micro-batches (drop-last), this rank's slice of each, from a position."""

    def __init__(self, n: int, global_micro: int, rank: int, world: int, seed: int, start: DataPosition):
        if global_micro > n:
            raise RecipeError(f"a global micro-batch of {global_micro} samples exceeds the dataset's {n}")
        self.n, self.global_micro, self.rank, self.world, self.seed = n, global_micro, rank, world, seed
        self.start = DataPosition(start.epoch, start.cursor)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, cursor = self.start.epoch, self.start.cursor
        local = self.global_micro // self.world
        while True:
            if cursor + self.global_micro > self.n:
                epoch, cursor = epoch + 1, 0
            order = epoch_order(self.n, self.seed, epoch)
            while cursor + self.global_micro <= self.n:
                lo = cursor + self.rank * local
                yield order[lo:lo + local].tolist()
                cursor += self.global_micro

    def advance(self, pos: DataPosition) -> DataPosition:
        """The position after one more global micro-batch."""
        epoch, cursor = pos.epoch, pos.cursor
        if cursor + self.global_micro > self.n:
            epoch, cursor = epoch + 1, 0
        return DataPosition(epoch, cursor + self.global_micro)


def collate_batch(items: list[tuple[torch.Tensor, str, dict]]) -> dict[str, Any]:
    """(image, caption, meta) items -> {"image": (B, 3, H, W), "caption": [str], "objects": [[object dict]]}
    (each scene's objects, as `Obj.to_dict` gives them; empty lists for datasets without scenes)."""
    from t2i.data.transforms import collate

    images, captions, metas = collate(items)
    return {"image": images, "caption": captions, "objects": [m.get("scene", {}).get("objects", []) for m in metas]}


def batch_stream(dataset: Dataset, batches: ShardedBatches, num_workers: int) -> Iterator[dict[str, Any]]:
    """Collated batches for this rank, forever, in the order `batches` gives."""
    # its own generator: creating the iterator must not draw from the global RNG (exact resume)
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate_batch, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(batches.seed))
    return iter(loader)
