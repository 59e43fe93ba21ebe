"""Pieces every backbone shares: the input contract check and BatchNorm-safe activation checkpointing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

INPUT_SIZE = 112


def check_input(x: torch.Tensor) -> None:
    """Raise a ValueError unless ``x`` has shape (B, 3, 112, 112), the contract of every backbone."""
    if x.ndim != 4 or tuple(x.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
        raise ValueError(
            f"backbones expect aligned faces of shape (B, 3, {INPUT_SIZE}, {INPUT_SIZE}) in [-1, 1], got "
            f"{tuple(x.shape)}; align and resize faces to {INPUT_SIZE}x{INPUT_SIZE} RGB first "
            "(marginface.align), and add a batch dimension for a single face"
        )


@contextlib.contextmanager
def _frozen_bn_statistics(module: nn.Module) -> Iterator[None]:
    """During the recomputation of a checkpointed block, stop its BatchNorms updating running statistics.

    Non-reentrant checkpointing re-runs the block's forward in training mode during backward; without this
    every BatchNorm would fold the same batch into its running mean/var twice (an effective momentum of
    2m - m^2) and count it twice in ``num_batches_tracked``.  Momentum 0 keeps the running statistics as
    they are; the counter is restored afterwards.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def run_checkpointed(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` without keeping its intermediate activations: they are recomputed during backward.

    Cuts training memory to roughly one activation per block at the cost of one extra forward.  Under
    torch.compile the recomputation is planned by AOTAutograd, which never replays the running-statistics
    update, so the BatchNorm guard above is only needed (and only used) in eager mode.
    """
    if torch.compiler.is_compiling():
        return checkpoint(block, x, use_reentrant=False)
    return checkpoint(
        block,
        x,
        use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), _frozen_bn_statistics(block)),
    )
