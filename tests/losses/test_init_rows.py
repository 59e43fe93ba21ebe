"""MarginLoss.init_rows: the same class centres however the classes are split over ranks."""

from __future__ import annotations

import pytest
import torch

from marginface import losses
from marginface.heads import shard_range


@pytest.mark.parametrize("name", ["arcface", "softmax", "subcenter_arcface"])
def test_shards_concatenate_to_the_unsplit_centres(name):
    c, d, seed = 9_000, 8, 3  # three init blocks of 4,096 rows, shard boundaries inside blocks
    full = losses.create(name, embedding_size=d, num_classes=c)
    full.init_rows(0, seed)
    for world in (2, 3, 7):
        parts = []
        for rank in range(world):
            start, end = shard_range(c, world, rank)
            shard = losses.create(name, embedding_size=d, num_classes=end - start)
            shard.init_rows(start, seed)
            parts.append(shard.weight.detach())
        assert torch.equal(torch.cat(parts), full.weight.detach()), f"world size {world}"


def test_init_rows_draws_the_usual_distribution_and_depends_on_the_seed():
    a = losses.create("cosface", embedding_size=64, num_classes=5_000)
    b = losses.create("cosface", embedding_size=64, num_classes=5_000)
    a.init_rows(0, seed=0)
    b.init_rows(0, seed=1)
    w = a.weight.detach()
    assert abs(float(w.std()) - 0.01) < 2e-4 and abs(float(w.mean())) < 2e-4
    assert not torch.equal(a.weight, b.weight)
