"""Heads: how a margin loss's logits are computed at scale.

A head wraps a loss from :mod:`marginface.losses` and is called like it: ``head(embeddings, labels)`` returns
the mean loss. ``DenseHead`` materialises the (B, C) logits (the reference); ``ChunkedHead`` never holds
(B, C) (online log-sum-exp, recomputation in backward) and, with ``fuse_optimizer``, not even the (C, D) centre
gradient (SGD applied chunk by chunk in backward); ``PartialFCHead`` visits the batch's classes plus
sampled negatives, with sparse row updates through ``SparseRowSGD``; ``ShardedHead`` splits the classes over
the ranks of a process group (optionally with Partial FC per shard). See docs/heads.md.
"""

from __future__ import annotations

from torch import nn

from marginface.heads.chunked import DEFAULT_CHUNK_SIZE, ChunkedHead
from marginface.heads.dense import DenseHead
from marginface.heads.partial_fc import PartialFCHead
from marginface.heads.sharded import ShardedHead, shard_range
from marginface.heads.sparse_optim import SparseRowSGD
from marginface.losses.base import MarginLoss
from marginface.registry import Registry

# factory(loss, *, chunk_size, sample_rate, seed, sparse_grad): each kind takes what it uses and ignores the rest
HEADS: Registry[nn.Module] = Registry("head kind")
HEADS.register("dense", lambda loss, **_: DenseHead(loss))
HEADS.register("chunked", lambda loss, *, chunk_size=None, **_: ChunkedHead(loss, chunk_size=chunk_size))
HEADS.register("partial_fc", PartialFCHead)
HEAD_KINDS = tuple(HEADS)


def create_head(kind: str, loss: MarginLoss, *, chunk_size: int | None = None,
                sample_rate: float = 0.1, seed: int = 0, sparse_grad: bool = True, sharded: bool = False,
                num_classes: int | None = None, process_group=None) -> nn.Module:
    """Build a head by kind: "dense", "chunked" or "partial_fc" (``sample_rate`` in (0, 1]).

    ``sharded=True`` splits the classes over the ranks of ``process_group`` (default: the world): ``loss``
    then holds this rank's shard and ``num_classes`` is the total; "chunked" shards every class, "partial_fc"
    samples within each shard. Parameters a kind does not use are ignored.
    """
    HEADS.factory(kind)  # an unknown kind fails here, before the sharded checks
    if sharded:
        if kind == "dense":
            raise ValueError("a sharded head is chunked by construction; use kind='chunked', sharded=True")
        if num_classes is None:
            raise ValueError("sharded=True needs num_classes, the total over all ranks")
        rate = sample_rate if kind == "partial_fc" else 1.0
        return ShardedHead(loss, num_classes, chunk_size=chunk_size, sample_rate=rate, seed=seed,
                           sparse_grad=sparse_grad, process_group=process_group)
    return HEADS.create(kind, loss, chunk_size=chunk_size, sample_rate=sample_rate, seed=seed,
                        sparse_grad=sparse_grad)


__all__ = [
    "DEFAULT_CHUNK_SIZE", "HEADS", "HEAD_KINDS", "ChunkedHead", "DenseHead", "PartialFCHead", "ShardedHead",
    "SparseRowSGD", "create_head", "shard_range",
]
