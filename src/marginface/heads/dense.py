"""The reference head: the loss's own dense path, materialising the (B, C) logits."""

from __future__ import annotations

from torch import Tensor, nn

from marginface.losses.base import MarginLoss


class DenseHead(nn.Module):
    """``head(embeddings, labels)`` is ``loss(embeddings, labels)``: every logit at once, (B, C) float32.

    The parity reference for the chunked, partial-FC and sharded heads, and the only head for losses whose
    objective is not a softmax cross-entropy. Memory: several (B, C) tensors live through backward.
    """

    def __init__(self, loss: MarginLoss) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Mean loss (scalar) of embeddings (B, D) with integer labels (B,)."""
        return self.loss(embeddings, labels)
