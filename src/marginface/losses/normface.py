"""NormFace (Wang et al., 2017, "NormFace: L2 Hypersphere Embedding for Face Verification")."""

from __future__ import annotations

from marginface.losses.base import MarginLoss


class NormFaceLoss(MarginLoss):
    """Normalised softmax: logits ``s cos(theta_j)`` for every class, no margin. Default ``scale`` 30."""

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 30.0) -> None:
        super().__init__(embedding_size, num_classes, scale=scale)
