"""AM-LFS's search space: a sampled loss (Li et al., "AM-LFS: AutoML for Loss Function Search", ICCV 2019).

AM-LFS writes the margin losses as two element-wise transforms inserted into the softmax loss (its Sec. 3.1-3.2):

* ``t``, on the target logit: the target's scaled cosine ``s cos(theta_y)`` becomes ``s t(cos(theta_y))``
  (CosFace is ``t(c) = c - m``, ArcFace ``t(c) = cos(theta + m)``; plain normalised softmax ``t(c) = c``);
* ``tau``, on the target probability: the loss ``-log p_y`` becomes ``-log tau(p_y)`` (focal-type losses).

The searched candidates are piecewise-linear functions over M equal intervals (the paper's search space):
``t(c) = a_i c + b_i`` for ``c`` in the i-th of M equal intervals of [-1, 1], and ``tau(p) = alpha_j p + beta_j``
for ``p`` in the j-th of K equal intervals of [0, 1]. One sample of the search is one set of the 2M + 2K
parameters; this module is that sample as a registered loss with explicit parameters, so it runs through every
head (the transforms are element-wise given the per-sample log-sum-exp, see ``probability_transform``).

Conventions (decisions where the paper is silent): a point on a breakpoint belongs to the interval above it
(``c = 1`` and ``p = 1`` to the last one); ``tau(p)`` is floored at ``TAU_FLOOR`` (a transform that reaches
0 or below would make ``-log tau`` undefined: there the loss is the constant ``-log TAU_FLOOR`` and gives no
gradient); the identity (all slopes 1, intercepts 0) is plain normalised softmax (NormFace) at scale s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from marginface.losses.base import MarginContext, MarginLoss
from marginface.losses.registry import register

#: the floor of tau(p) before the log: -log(1e-30) = 69.1 is the largest loss a sample can get from tau.
TAU_FLOOR = 1e-30
#: the default number of intervals of each transform.
DEFAULT_INTERVALS = 6


def _vector(values: Sequence[float] | None, default: float, size: int | None, name: str) -> tuple[float, ...]:
    if values is None:
        return (default,) * (size or DEFAULT_INTERVALS)
    out = tuple(float(v) for v in values)
    if not out or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be a non-empty sequence of finite numbers, got {values!r}")
    return out


def interval_index(x: Tensor, low: float, high: float, count: int) -> Tensor:
    """(B,) the interval of each x among ``count`` equal intervals of [low, high] (clamped to the end ones)."""
    position = torch.floor((x.detach() - low) * (count / (high - low)))
    return position.clamp_(0, count - 1).long()


def piecewise_linear(x: Tensor, slopes: Tensor, intercepts: Tensor, low: float, high: float) -> Tensor:
    """``slopes[i] x + intercepts[i]`` with i the interval of x in [low, high]; x (B,), slopes/intercepts (M,)."""
    i = interval_index(x, low, high, slopes.numel())
    return slopes[i] * x + intercepts[i]


@register("amlfs")
class AMLFSLoss(MarginLoss):
    """One sampled AM-LFS loss: target logit ``s t(cos theta_y)``, others ``s cos theta_j``, loss ``-log tau(p_y)``.

    Args:
        scale: s, the logit scale.
        logit_slopes, logit_intercepts: ``a`` and ``b`` of ``t`` on M equal intervals of the cosine [-1, 1]
            (cosine units; default the identity on 6 intervals).
        prob_slopes, prob_intercepts: ``alpha`` and ``beta`` of ``tau`` on K equal intervals of the target
            probability [0, 1] (default the identity on 6 intervals).

    ``logits`` are the t-transformed logits; their cross-entropy is the loss only when ``tau`` is the identity
    (``loss = -log tau(softmax(logits)_y)`` in general).
    """

    def __init__(
        self, embedding_size: int, num_classes: int, scale: float = 64.0,
        logit_slopes: Sequence[float] | None = None, logit_intercepts: Sequence[float] | None = None,
        prob_slopes: Sequence[float] | None = None, prob_intercepts: Sequence[float] | None = None,
    ) -> None:
        super().__init__(embedding_size, num_classes, scale=scale)
        self.set_transform(logit_slopes, logit_intercepts, prob_slopes, prob_intercepts)

    def set_transform(
        self, logit_slopes: Sequence[float] | None = None, logit_intercepts: Sequence[float] | None = None,
        prob_slopes: Sequence[float] | None = None, prob_intercepts: Sequence[float] | None = None,
    ) -> None:
        """Replace the sampled parameters (the search does this each round); None: the identity."""
        m = len(logit_slopes) if logit_slopes is not None else (len(logit_intercepts) if logit_intercepts else None)
        k = len(prob_slopes) if prob_slopes is not None else (len(prob_intercepts) if prob_intercepts else None)
        self.logit_slopes = _vector(logit_slopes, 1.0, m, "logit_slopes")
        self.logit_intercepts = _vector(logit_intercepts, 0.0, m, "logit_intercepts")
        self.prob_slopes = _vector(prob_slopes, 1.0, k, "prob_slopes")
        self.prob_intercepts = _vector(prob_intercepts, 0.0, k, "prob_intercepts")
        if len(self.logit_slopes) != len(self.logit_intercepts):
            raise ValueError(f"logit_slopes and logit_intercepts need the same length (one per interval), got "
                             f"{len(self.logit_slopes)} and {len(self.logit_intercepts)}")
        if len(self.prob_slopes) != len(self.prob_intercepts):
            raise ValueError(f"prob_slopes and prob_intercepts need the same length (one per interval), got "
                             f"{len(self.prob_slopes)} and {len(self.prob_intercepts)}")

    def _params(self, values: tuple[float, ...], like: Tensor) -> Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device)

    def target_transform(self, cos: Tensor, ctx: MarginContext) -> Tensor:
        t = piecewise_linear(cos, self._params(self.logit_slopes, cos), self._params(self.logit_intercepts, cos),
                             -1.0, 1.0)
        return self.scale * t

    def probability_transform(self, cross_entropy: Tensor, ctx: MarginContext) -> Tensor:
        """(B,) ``-log tau(p)`` from the per-sample cross-entropy ``-log p`` (B,).

        Where ``tau`` is linear through 0 on p's interval (``beta = 0``, ``alpha > 0``: the identity and its
        rescalings) it is computed as ``-log p - log alpha``, exact even when p underflows; elsewhere as
        ``-log max(alpha p + beta, TAU_FLOOR)`` with ``p = exp(-cross_entropy)``.
        """
        p = torch.exp(-cross_entropy)
        j = interval_index(p, 0.0, 1.0, len(self.prob_slopes))
        alpha = self._params(self.prob_slopes, p)[j]
        beta = self._params(self.prob_intercepts, p)[j]
        through_zero = (beta == 0) & (alpha > 0)
        scaled = cross_entropy - torch.log(torch.where(through_zero, alpha, torch.ones_like(alpha)))
        general = -torch.log(torch.clamp(alpha * p + beta, min=TAU_FLOOR))
        return torch.where(through_zero, scaled, general)

    def never_helps(self) -> bool:
        """Whether ``t`` satisfies "the margin never helps": t(c) <= c on [-1, 1] and t non-decreasing in c.

        Piecewise-linear, so it suffices to check both ends of every interval (t(c) <= c) and slopes >= 0
        with no downward jump at a breakpoint. The paper's space does not impose it (see docs/amlfs.md).
        """
        m = len(self.logit_slopes)
        edges = [-1.0 + 2.0 * i / m for i in range(m + 1)]
        for i, (a, b) in enumerate(zip(self.logit_slopes, self.logit_intercepts)):
            lo, hi = a * edges[i] + b, a * edges[i + 1] + b
            if a < 0 or lo > edges[i] + 1e-12 or hi > edges[i + 1] + 1e-12:
                return False
            if i + 1 < m and self.logit_slopes[i + 1] * edges[i + 1] + self.logit_intercepts[i + 1] < hi - 1e-12:
                return False
        return True

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, logit_slopes={self.logit_slopes}, logit_intercepts={self.logit_intercepts},"
                f" prob_slopes={self.prob_slopes}, prob_intercepts={self.prob_intercepts}")
