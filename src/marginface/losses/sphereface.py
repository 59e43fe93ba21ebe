"""SphereFace / A-Softmax (Liu et al., CVPR 2017, "SphereFace: Deep Hypersphere Embedding for Face Recognition").

Class centres are normalised, features are not: logits are ``||x|| cos(theta_j)`` and the target's is
``||x|| (lambda cos(theta) + psi(theta)) / (1 + lambda)`` with ``psi(theta) = (-1)^k cos(m theta) - 2k`` on
``theta in [k pi/m, (k+1) pi/m]`` — the monotonic extension of ``cos(m theta)`` to [0, pi]. lambda anneals from a
large value (plain softmax) down to ``lambda_min``, as in the authors' Caffe code:
``lambda = max(lambda_min, lambda_base (1 + lambda_gamma step)^(-lambda_power))``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from marginface.losses.base import MarginContext, MarginLoss
from marginface.losses.registry import register


def chebyshev_cos_multiple(cos: Tensor, m: int) -> Tensor:
    """``cos(m theta)`` as the Chebyshev polynomial ``T_m(cos theta)``: exact, smooth, no arccos gradient."""
    prev, cur = torch.ones_like(cos), cos
    if m == 0:
        return prev
    for _ in range(m - 1):
        prev, cur = cur, 2 * cos * cur - prev
    return cur


@register("sphereface")
class SphereFaceLoss(MarginLoss):
    """A-Softmax with integer multiplicative ``margin`` m (default 4) and lambda annealing.

    State: the buffer ``step`` advances by one at each training-mode forward (one per training step), before
    lambda is computed; eval-mode forwards use the current step without advancing it. ``scale`` is not used:
    the feature norm plays its role.
    """

    def __init__(
        self, embedding_size: int, num_classes: int, margin: int = 4, lambda_base: float = 1000.0,
        lambda_gamma: float = 0.12, lambda_power: float = 1.0, lambda_min: float = 5.0,
    ) -> None:
        super().__init__(embedding_size, num_classes, scale=1.0)
        if int(margin) != margin or margin < 1:
            raise ValueError(f"SphereFace's margin is the integer multiplier m >= 1, got {margin!r}")
        if lambda_min < 0 or lambda_base < 0 or lambda_gamma < 0:
            raise ValueError("lambda_base, lambda_gamma and lambda_min must be >= 0")
        self.margin = int(margin)
        self.lambda_base, self.lambda_gamma = float(lambda_base), float(lambda_gamma)
        self.lambda_power, self.lambda_min = float(lambda_power), float(lambda_min)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def current_lambda(self) -> float:
        decayed = self.lambda_base * (1.0 + self.lambda_gamma * int(self.step)) ** (-self.lambda_power)
        return max(self.lambda_min, decayed)

    def psi(self, cos: Tensor) -> Tensor:
        """``(-1)^k cos(m theta) - 2k`` with ``k = floor(m theta / pi)`` (k is piecewise constant: no gradient)."""
        with torch.no_grad():
            theta = torch.acos(cos.clamp(-1.0, 1.0))
            k = torch.floor(self.margin * theta / torch.pi).clamp(0, self.margin - 1)
            sign = 1.0 - 2.0 * torch.remainder(k, 2)
        return sign * chebyshev_cos_multiple(cos, self.margin) - 2.0 * k

    def update_state(self, ctx: MarginContext) -> None:
        self.step += 1

    def target_transform(self, cos: Tensor, ctx: MarginContext) -> Tensor:
        lam = self.current_lambda()
        return ctx.norms * (lam * cos + self.psi(cos)) / (1.0 + lam)

    def nontarget_logits(self, similarity: Tensor, ctx: MarginContext) -> Tensor:
        return ctx.norms[:, None] * similarity

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, margin={self.margin}"
