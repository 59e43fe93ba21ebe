"""Heads that put the triplet loss in the trainer: triplet alone, or margin softmax + lambda * triplet.

Under DDP the triplet loss is mined over the *global* batch. What crosses ranks, once per forward: every rank's
embeddings ``(B / R, D)`` float32 and labels ``(B / R,)`` int64 (an all-gather; nothing else, and nothing extra
in backward beyond DDP's usual gradient all-reduce). Each rank then evaluates the same global loss; autograd
reaches only its own slice of the gathered embeddings (the other ranks' slices are constants), so its backbone
gradient is its share of the global gradient. DDP *averages* those shares over the ranks, so the triplet branch
scales its own slice's gradient by R: the result is the gradient of the global triplet loss, as one process
with the whole batch would compute it. A margin-softmax branch beside it keeps the usual per-rank mean.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from marginface.triplet.loss import TripletLoss


def _scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``factor`` (same value, rescaled backward)."""
    return x * factor - (x * (factor - 1.0)).detach()


def gather_batch(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch ``(R * B_local, D)`` and labels, rank-ordered; only this rank's slice carries gradient,
    scaled by R (see the module docstring). Without an initialised process group: the inputs unchanged."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return embeddings, labels
    world, rank = dist.get_world_size(), dist.get_rank()
    local = embeddings.float()
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local.detach().contiguous())
    label_parts = [torch.empty_like(labels) for _ in range(world)]
    dist.all_gather(label_parts, labels.contiguous())
    parts[rank] = _scale_grad(local, float(world))
    return torch.cat(parts), torch.cat(label_parts)


class TripletHead(nn.Module):
    """``head(embeddings (B, D), labels (B,)) -> scalar``: the triplet loss over the (global) batch.

    With ``margin_head`` (any head of :mod:`marginface.heads` wrapping a margin loss) the objective is
    ``margin_head(e, y) + weight * triplet(e, y)``, the softmax on this rank's batch as usual.
    """

    def __init__(self, triplet: TripletLoss, margin_head: nn.Module | None = None, weight: float = 1.0) -> None:
        super().__init__()
        self.triplet, self.margin_head, self.weight = triplet, margin_head, float(weight)
        self.last_triplet: torch.Tensor | None = None
        """The unweighted triplet term of the last forward (detached), for logging."""

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        all_embeddings, all_labels = gather_batch(embeddings, labels)
        triplet = self.triplet(all_embeddings, all_labels)
        self.last_triplet = triplet.detach()
        loss = self.weight * triplet
        if self.margin_head is not None:
            loss = loss + self.margin_head(embeddings, labels)
        return loss
