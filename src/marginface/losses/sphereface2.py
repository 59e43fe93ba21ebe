"""SphereFace2 (Wen, Liu et al., ICLR 2022, "SphereFace2: Binary Classification is All You Need for Deep Face
Recognition").

No softmax: every class is its own binary (one-vs-all) classifier on the hypersphere. With r the scale, b a
learnable bias shared by all classes, lambda the positive/negative balance and the similarity adjustment
``g(c) = 2 ((c + 1) / 2)^t - 1``, the per-sample loss of SphereFace2-C (additive cosine margin m) is

    lambda / r * log(1 + exp(-(r (g(cos theta_y) - m) + b)))
    + (1 - lambda) / r * sum_{j != y} log(1 + exp(r (g(cos theta_j) + m) + b))

and SphereFace2-A (additive angular margin) uses ``g(cos(min(theta_y + m, pi)))`` for the target and
``g(cos theta_j)`` for the others. Defaults are those of the authors' code (ydwen/opensphere
model/head/sphereface2.py): lambda 0.7, r 40, m 0.4, t 3, magnitude type "C".

Conventions and choices:
- ``logits`` are the per-class *binary* logits ``z_ij`` (B, C): sigmoid(z_ij) is the probability that sample i
  belongs to class j. They are not softmax logits (``objective = "binary"``).
- The loss is element-wise over classes: ``pair_losses`` gives the (B, c) terms of any slice of classes, so a
  head can sum them chunk by chunk; ``loss_from_logits`` is ``loss_weight * sum_j(pair_losses) / r``, averaged
  over the batch. ``loss_weight`` defaults to 1 (the paper's formula); opensphere's configs multiply the loss by
  ``lw = 50`` (equivalently a 50x learning rate for SGD).
- The bias starts at the paper's closed-form value (``initial_bias``): the b that minimises the loss when every
  cosine is 0 (random initialisation), so training starts balanced between the one positive and the C - 1
  negatives.
- Gradient: opensphere's ``sphereface2.py`` computes the adjustment under no_grad and adds ``g(c) - c`` to c, so
  the forward value is r g(c) + b but the backward treats dg/dc as 1 (a straight-through trick; its
  ``sphereface2c.py`` uses the true gradient). The true gradient is the default here; ``detach_adjustment=True``
  is the named switch for opensphere's behaviour.
- SphereFace2-M (multiplicative margin) is not implemented.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from marginface.losses.base import MarginContext, MarginLoss, angle
from marginface.losses.registry import register

MAGNITUDE_TYPES = ("C", "A")


def adjust(cos: Tensor, t: float) -> Tensor:
    """The similarity adjustment g(c) = 2 ((c + 1) / 2)^t - 1 (c clamped to [-1, 1] so the base stays >= 0)."""
    return 2.0 * ((cos.clamp(-1.0, 1.0) + 1.0) / 2.0) ** t - 1.0


def initial_bias(num_classes: int, positive_weight: float, scale: float, margin: float, t: float,
                 magnitude_type: str = "C") -> float:
    """The paper's initial b: the stationary point of the loss in b when every cosine is 0.

    With a_y, a_i the logits without bias of the target and a non-target at cos = 0 and
    z = lambda / ((1 - lambda) (C - 1)):  b = log(2 z) - a_i - log(1 - z + sqrt((1 - z)^2 + 4 z exp(a_y - a_i))).
    """
    z = positive_weight / ((1.0 - positive_weight) * (num_classes - 1.0))
    g0 = 2.0 * 0.5**t - 1.0  # g(0)
    if magnitude_type == "C":
        a_y, a_i = scale * (g0 - margin), scale * (g0 + margin)
    else:  # "A": the target's angle pi/2 becomes pi/2 + m
        theta_y = min(math.pi, math.pi / 2.0 + margin)
        a_y, a_i = scale * (2.0 * ((math.cos(theta_y) + 1.0) / 2.0) ** t - 1.0), scale * g0
    root = math.sqrt((1.0 - z) ** 2 + 4.0 * z * math.exp(a_y - a_i))
    return math.log(2.0 * z) - a_i - math.log(1.0 - z + root)


def softplus(z: Tensor) -> Tensor:
    """log(1 + e^z), exact to the dtype: torch returns z itself above ``threshold`` (default 20), which is exact in
    float32 (e^-20 < 2^-24) but off by e^-20 ~ 2e-9 in float64, where e^-40 < 2^-53 is needed."""
    return F.softplus(z, threshold=40.0 if z.dtype == torch.float64 else 20.0)


@register("sphereface2")
class SphereFace2Loss(MarginLoss):
    """One-vs-all binary loss. ``scale`` is r, ``margin`` m (cosine units for "C", radians for "A"),
    ``positive_weight`` the paper's lambda, ``t`` the adjustment power (>= 1). Owns ``bias`` (a scalar b)."""

    objective = "binary"

    def __init__(
        self, embedding_size: int, num_classes: int, scale: float = 40.0, margin: float = 0.4,
        positive_weight: float = 0.7, t: float = 3.0, magnitude_type: str = "C", loss_weight: float = 1.0,
        detach_adjustment: bool = False,
    ) -> None:
        super().__init__(embedding_size, num_classes, scale=scale)
        if magnitude_type not in MAGNITUDE_TYPES:
            raise ValueError(f"magnitude_type must be one of {MAGNITUDE_TYPES}, got {magnitude_type!r}")
        if not 0 < positive_weight < 1:
            raise ValueError(f"positive_weight (lambda) must lie in (0, 1), got {positive_weight}")
        if margin < 0 or (magnitude_type == "A" and margin >= math.pi):
            raise ValueError(f"margin must lie in [0, pi) (type A) or be >= 0 (type C), got {margin}")
        if t < 1:
            raise ValueError(f"t (the similarity adjustment power) must be >= 1, got {t}")
        if loss_weight <= 0:
            raise ValueError(f"loss_weight must be > 0, got {loss_weight}")
        self.margin, self.positive_weight, self.t = float(margin), float(positive_weight), float(t)
        self.magnitude_type, self.loss_weight = magnitude_type, float(loss_weight)
        self.detach_adjustment = bool(detach_adjustment)
        self.bias = nn.Parameter(torch.empty(()))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            self.bias.fill_(initial_bias(self.num_classes, self.positive_weight, self.scale, self.margin,
                                         self.t, self.magnitude_type))

    def _binary_logit(self, cos: Tensor, adjusted: Tensor) -> Tensor:
        if self.detach_adjustment:
            adjusted = cos + (adjusted - cos).detach()
        return self.scale * adjusted + self.bias.to(cos.dtype)

    def target_transform(self, cos: Tensor, ctx: MarginContext) -> Tensor:
        if self.magnitude_type == "C":
            adjusted = adjust(cos, self.t) - self.margin
        else:
            adjusted = adjust(torch.cos(torch.clamp(angle(cos) + self.margin, max=math.pi)), self.t)
        return self._binary_logit(cos, adjusted)

    def nontarget_logits(self, similarity: Tensor, ctx: MarginContext) -> Tensor:
        margin = self.margin if self.magnitude_type == "C" else 0.0
        return self._binary_logit(similarity, adjust(similarity, self.t) + margin)

    def pair_losses(self, logits: Tensor, target_mask: Tensor) -> Tensor:
        """(B, c) the weighted binary cross-entropy of each (sample, class) pair of a slice of classes.

        ``target_mask`` (B, c) marks each sample's own class; the loss is ``loss_weight / r`` times the sum of
        these over all classes, averaged over the batch.
        """
        positive = self.positive_weight * softplus(-logits)
        negative = (1.0 - self.positive_weight) * softplus(logits)
        return torch.where(target_mask, positive, negative)

    def loss_from_logits(self, logits: Tensor, ctx: MarginContext) -> Tensor:
        target_mask = F.one_hot(ctx.labels, logits.shape[1]).bool()
        per_sample = self.pair_losses(logits, target_mask).sum(dim=1)
        return self.loss_weight / self.scale * per_sample.mean()

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, margin={self.margin}, positive_weight={self.positive_weight}, t={self.t}, "
            f"magnitude_type={self.magnitude_type!r}, loss_weight={self.loss_weight}"
        )
