"""Partial FC: the margin cross-entropy over the batch's classes plus a uniform sample of the others.

An et al., "Killing Two Birds with One Stone: Efficient and Robust Training of Face Recognition CNNs by
Partial FC" (CVPR 2022). Each step visits ``int(sample_rate * C)`` classes: every positive class of the batch,
then negatives drawn uniformly without replacement from the rest (a ``torch.Generator`` seeded at
construction, so runs are reproducible). If the positives alone reach that count, only they are visited
(insightface's rule). The loss is the cross-entropy *over the sampled classes only*, computed chunk by chunk.

Gradient semantics (see docs/heads.md): with ``sparse_grad=True`` (default) ``loss.weight.grad`` is a sparse
COO tensor holding the sampled rows only, and :class:`marginface.heads.SparseRowSGD` updates exactly those
rows — their momentum buffer and weight decay included — and leaves every other row, and its momentum,
bit-identical. insightface's PartialFC_V2 instead indexes a dense parameter, so its gradient is dense with
zeros in unsampled rows and its dense SGD still decays and momentum-moves every row at every step.
``sparse_grad=False`` gives that dense gradient for use with any optimizer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from marginface.heads.chunked import ChunkedSource, ChunkPlan, check_chunk_size, check_softmax_objective
from marginface.losses.base import MarginLoss


def check_sample_rate(sample_rate: float) -> float:
    """Return ``sample_rate`` as a float if it lies in (0, 1], else raise ValueError naming the fix."""
    is_number = isinstance(sample_rate, (int, float)) and not isinstance(sample_rate, bool)
    if not is_number or not math.isfinite(sample_rate):
        raise ValueError(f"sample_rate must be a number in (0, 1], got {sample_rate!r}")
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(
            f"sample_rate must lie in (0, 1] (the fraction of classes visited per step), got {sample_rate}; "
            "use 1.0 for every class"
        )
    return float(sample_rate)


def sample_classes(positives: Tensor, num_classes: int, num_sample: int,
                   generator: torch.Generator) -> Tensor:
    """(n,) sorted class indices: all ``positives`` (unique, (p,)) plus ``num_sample - p`` uniform negatives.

    Negatives are drawn without replacement from the classes not in ``positives`` with a CPU ``generator``
    (so the draw does not depend on the device); when ``p >= num_sample`` the positives alone are returned.
    """
    device = positives.device
    missing = num_sample - positives.numel()
    if missing <= 0:
        return positives.sort().values
    is_positive = torch.zeros(num_classes, dtype=torch.bool)
    is_positive[positives.cpu()] = True
    order = torch.randperm(num_classes, generator=generator)
    negatives = order[~is_positive[order]][:missing]
    return torch.cat([positives, negatives.to(device)]).sort().values


class PartialFCHead(nn.Module):
    """Margin cross-entropy over the batch's positive classes plus uniformly sampled negatives.

    ``sample_rate`` in (0, 1]: fraction of the classes visited per step (1.0: all, equal to ``ChunkedHead``).
    ``seed`` seeds the head's CPU generator (``head.generator``); its state is part of ``state_dict()`` (the
    ``_extra_state`` entry), so a checkpoint of the head resumes the sampling exactly.
    After each forward ``last_index`` (n,) holds the visited class indices, sorted.
    """

    def __init__(self, loss: MarginLoss, sample_rate: float = 0.1, chunk_size: int | None = None,
                 seed: int = 0, sparse_grad: bool = True) -> None:
        super().__init__()
        check_softmax_objective(loss, "PartialFCHead")
        self.loss = loss
        self.sample_rate = check_sample_rate(sample_rate)
        self.chunk_size = check_chunk_size(chunk_size)
        self.sparse_grad = bool(sparse_grad)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.num_sample = max(1, int(self.sample_rate * loss.weight.shape[0]))
        self.last_index: Tensor | None = None

    def get_extra_state(self) -> Tensor:
        return self.generator.get_state()

    def set_extra_state(self, state: Tensor) -> None:
        if state.numel():  # empty: a sharded head's sampler that never ran; keep the seeded one
            self.generator.set_state(state)

    def sample(self, labels: Tensor) -> Tensor:
        """(n,) sorted indices of the classes visited for a batch with ``labels`` (B,)."""
        num_classes = self.loss.weight.shape[0]
        return sample_classes(torch.unique(labels), num_classes, self.num_sample, self.generator)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Mean loss (scalar) over the sampled classes, embeddings (B, D), labels (B,) in [0, num_classes)."""
        self.loss.check_inputs(embeddings, labels)
        labels = labels.long()
        index = self.sample(labels)
        self.last_index = index
        positions = torch.searchsorted(index, labels)
        plan = ChunkPlan(self.loss, positions=positions, chunk_size=self.chunk_size, index=index,
                         sparse_grad=self.sparse_grad)
        return self.loss.loss_from_source(embeddings, labels, ChunkedSource(plan, labels))

    def extra_repr(self) -> str:
        return f"sample_rate={self.sample_rate}, num_sample={self.num_sample}, chunk_size={self.chunk_size}"
