"""Sub-center ArcFace (Deng et al., ECCV 2020, "Sub-center ArcFace: Boosting Face Recognition by Large-scale
Noisy Web Faces").

Each class owns ``k`` sub-centres instead of one; the similarity of a sample with a class is the largest cosine
over that class's sub-centres (the paper's max pooling, Eq. 2: ``theta_{i,j} = arccos(max_k W_{j_k}^T x_i)``), and
ArcFace's additive angular margin is applied to the target class's pooled cosine. Clean samples gather around a
dominant sub-centre while noisy ones can sit at a non-dominant one, which is what makes the loss robust to
label noise. The paper's default is k = 3 (with ArcFace's scale 64 and margin 0.5); k = 1 is ArcFace exactly.

The paper's second stage (dropping non-dominant sub-centres and samples far from the dominant one after
training) is a data-cleaning step, not part of the loss, and is not implemented here.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from marginface.losses.arcface import ArcFaceLoss
from marginface.losses.registry import register


@register("subcenter_arcface")
class SubCenterArcFaceLoss(ArcFaceLoss):
    """ArcFace on the max-pooled cosine over ``k`` sub-centres per class.

    ``weight`` has shape (num_classes, k, embedding_size): dimension 0 stays the class, so a head slicing
    ``weight[a:b]`` gets the (b - a, k, D) sub-centres of those classes and ``similarity`` pools them itself.
    ``margin`` is in radians (default 0.5), ``scale`` 64, ``easy_margin`` as in ArcFace. The gradient of the
    max flows to the winning sub-centre only (the paper's max pooling; ties have measure zero).
    """

    def __init__(
        self, embedding_size: int, num_classes: int, k: int = 3, scale: float = 64.0, margin: float = 0.5,
        easy_margin: bool = False,
    ) -> None:
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k (sub-centres per class) must be a positive int, got {k!r}")
        super().__init__(embedding_size, num_classes, scale=scale, margin=margin, easy_margin=easy_margin)
        self.k = k

    def weight_shape(self) -> tuple[int, ...]:
        return (self.num_classes, self.k, self.embedding_size)

    def similarity(self, features: Tensor, rows: Tensor, classes: Tensor | None = None) -> Tensor:
        """(B, c) the max over each class's k sub-centres of the cosine; ``rows`` (c, k, D)."""
        if rows.dim() != 3 or rows.shape[1:] != (self.k, self.embedding_size):
            raise ValueError(
                f"sub-center rows must have shape (c, {self.k}, {self.embedding_size}), got {tuple(rows.shape)}"
            )
        centres = F.normalize(rows.to(features.dtype), dim=-1)
        cos = features @ centres.reshape(-1, self.embedding_size).t()  # (B, c * k), one matmul
        return cos.view(features.shape[0], rows.shape[0], self.k).amax(dim=2)

    def target_similarity(self, features: Tensor, labels: Tensor) -> Tensor:
        """(B,) the max over the k sub-centres of each sample's own class, without the (B, C) matrix."""
        centres = F.normalize(self.weight[labels].to(features.dtype), dim=-1)  # (B, k, D)
        return (centres @ features[:, :, None]).squeeze(2).amax(dim=1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k}"
