"""The batch order of t2i/train/data.py: sharded over processes without overlap, identical to one process's
order, and resumable from a DataPosition."""

from __future__ import annotations

from itertools import islice

import pytest

from t2i.train.config import RecipeError
from t2i.train.data import DataPosition, ShardedBatches, epoch_order

# 22 samples, global micro-batches of 4: 5 batches per epoch and 2 samples dropped (drop-last) each epoch
N, GLOBAL, SEED = 22, 4, 7
PER_EPOCH = N // GLOBAL
TAKE = 3 * PER_EPOCH + 2  # crosses three epoch boundaries


def _take(rank: int, world: int, start: DataPosition = DataPosition(), k: int = TAKE) -> list[list[int]]:
    return list(islice(ShardedBatches(N, GLOBAL, rank, world, SEED, start), k))


def test_world_of_two_splits_the_single_process_batches():
    single = _take(0, 1)
    r0, r1 = _take(0, 2), _take(1, 2)
    assert all(len(b) == GLOBAL for b in single) and all(len(b) == GLOBAL // 2 for b in r0 + r1)
    for whole, a, b in zip(single, r0, r1, strict=True):
        assert a + b == whole  # rank 0 takes the first slots, rank 1 the next: same samples, same order
        assert not set(a) & set(b)
    # within an epoch no sample is seen twice, by either rank
    for e in range(3):
        seen = [i for a, b in zip(r0[e * PER_EPOCH:(e + 1) * PER_EPOCH], r1[e * PER_EPOCH:(e + 1) * PER_EPOCH])
                for i in a + b]
        assert len(seen) == len(set(seen)) == PER_EPOCH * GLOBAL
        assert seen == epoch_order(N, SEED, e)[:PER_EPOCH * GLOBAL].tolist()
    # epochs are reshuffled, not replayed
    assert single[:PER_EPOCH] != single[PER_EPOCH:2 * PER_EPOCH]


@pytest.mark.parametrize("world", [1, 2])
def test_advance_and_restart_continue_the_same_sequence(world):
    for rank in range(world):
        full = _take(rank, world)
        batches = ShardedBatches(N, GLOBAL, rank, world, SEED, DataPosition())
        pos = DataPosition()
        for k in range(TAKE):
            # a process restarted at the position reached after k batches yields batch k onwards
            assert _take(rank, world, pos, TAKE - k) == full[k:], (rank, k, pos)
            pos = batches.advance(pos)
        assert pos.epoch == 3 and pos.cursor == 2 * GLOBAL


def test_advance_positions_and_epoch_wrap():
    batches = ShardedBatches(N, GLOBAL, 1, 2, SEED, DataPosition())
    pos, seen = DataPosition(), []
    for _ in range(PER_EPOCH + 1):
        pos = batches.advance(pos)
        seen.append(pos.to_dict())
    assert seen[:PER_EPOCH] == [{"epoch": 0, "cursor": GLOBAL * (k + 1)} for k in range(PER_EPOCH)]
    assert seen[PER_EPOCH] == {"epoch": 1, "cursor": GLOBAL}  # 20 + 4 > 22: the next epoch starts
    # the start position is copied, not aliased: advancing a caller's position cannot move the iterator
    start = DataPosition(1, 8)
    b = ShardedBatches(N, GLOBAL, 0, 1, SEED, start)
    start.cursor = 0
    assert next(iter(b)) == epoch_order(N, SEED, 1)[8:12].tolist()


def test_seed_changes_the_order_and_oversized_batches_fail():
    assert _take(0, 1) != list(islice(ShardedBatches(N, GLOBAL, 0, 1, SEED + 1, DataPosition()), TAKE))
    with pytest.raises(RecipeError, match="exceeds the dataset"):
        ShardedBatches(3, 4, 0, 1, SEED, DataPosition())
