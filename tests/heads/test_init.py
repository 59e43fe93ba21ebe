"""create_head: the factory the trainer uses (head: dense | chunked | partial_fc, chunk_size, sample_rate)."""

from __future__ import annotations

import pytest
import torch

from marginface import losses
from marginface.heads import ChunkedHead, DenseHead, PartialFCHead, ShardedHead, create_head
from tests.heads.helpers import batch, build


def test_each_kind_builds_its_head_and_all_agree():
    x, labels = batch(16, 37)
    values = {}
    for kind, cls in [("dense", DenseHead), ("chunked", ChunkedHead), ("partial_fc", PartialFCHead)]:
        head = create_head(kind, build("arcface", {}), chunk_size=5, sample_rate=1.0)
        assert isinstance(head, cls)
        values[kind] = head(x, labels)
    torch.testing.assert_close(values["chunked"], values["dense"], rtol=1e-6, atol=0)
    torch.testing.assert_close(values["partial_fc"], values["dense"], rtol=1e-6, atol=0)


def test_parameters_reach_the_head():
    loss = losses.create("cosface", embedding_size=4, num_classes=100)
    head = create_head("partial_fc", loss, chunk_size=7, sample_rate=0.25, seed=3)
    assert (head.chunk_size, head.sample_rate, head.num_sample) == (7, 0.25, 25)
    sharded = create_head("partial_fc", loss, sharded=True, num_classes=200, sample_rate=0.5)
    assert isinstance(sharded, ShardedHead) and sharded.sample_rate == 0.5
    assert create_head("chunked", loss, sharded=True, num_classes=200).sample_rate == 1.0


def test_bad_kinds_and_arguments_are_clear_errors():
    loss = losses.create("cosface", embedding_size=4, num_classes=10)
    with pytest.raises(ValueError, match="unknown head kind 'sparse'"):
        create_head("sparse", loss)
    with pytest.raises(ValueError, match="sharded"):
        create_head("dense", loss, sharded=True, num_classes=20)
    with pytest.raises(ValueError, match="sample_rate"):
        create_head("partial_fc", loss, sample_rate=2.0)
    with pytest.raises(ValueError, match="chunk_size"):
        create_head("chunked", loss, chunk_size=0)
