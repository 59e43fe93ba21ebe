"""Plain softmax cross-entropy: a linear classifier ``W x + b`` with no normalisation and no margin."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from marginface.losses.base import MarginLoss
from marginface.losses.registry import register


@register("softmax")
class SoftmaxLoss(MarginLoss):
    """The baseline of every margin-loss paper: logits ``W_j . x + b_j`` for every class (target included).

    ``scale`` is fixed at 1 (the logits are not normalised). The "similarity" of this loss is the raw linear
    score, so chunked and sharded heads treat it like any other member of the family.
    """

    normalizes_features = False

    def __init__(self, embedding_size: int, num_classes: int, bias: bool = True) -> None:
        super().__init__(embedding_size, num_classes, scale=1.0)
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None

    def similarity(self, features: Tensor, rows: Tensor, classes: Tensor | None = None) -> Tensor:
        out = features @ rows.to(features.dtype).t()
        if self.bias is not None:
            bias = self.bias if classes is None else self.bias[classes]
            out = out + bias.to(out.dtype)
        return out

    def target_similarity(self, features: Tensor, labels: Tensor) -> Tensor:
        out = (features * self.weight[labels].to(features.dtype)).sum(dim=1)
        if self.bias is not None:
            out = out + self.bias[labels].to(out.dtype)
        return out
