"""AdaFace (Kim, Jain & Liu, CVPR 2022, "AdaFace: Quality Adaptive Margin for Face Recognition").

The feature norm is a proxy for image quality; the margin adapts to it. With the norm ``z`` of the embedding
(detached and clipped to [0.001, 100]) and running statistics ``mu``, ``sigma`` of z over batches,

    z_hat   = clip(h (z - mu) / (sigma + eps), -1, 1)          (Eq. 12, eps = 1e-3)
    g_angle = -m z_hat,   g_add = m z_hat + m                   (Eq. 11)
    target  = s (cos(theta + g_angle) - g_add),   others s cos(theta_j).

A high-quality sample (z_hat -> 1) gets an additive cosine margin 2m and a negative angular one (CosFace-like
emphasis of hard samples); a low-quality one (z_hat -> -1) gets an angular margin m and no additive one
(ArcFace-like, de-emphasising hard, likely unrecognisable samples). Defaults are the official training
configuration (mk-minchul/AdaFace: m 0.4, h 0.333, s 64, t_alpha 0.01 = our ``momentum``).

State: buffers ``batch_mean`` (starts at 20) and ``batch_std`` (starts at 100), the official initial values.
At each training-mode forward, before use: ``batch_mean <- momentum * mean(z) + (1 - momentum) * batch_mean``
and likewise ``batch_std`` with the unbiased batch std of z (Eq. 13-14; the official code's ``t_alpha``). A
batch of one sample has no std: then ``batch_std`` keeps its value (the official code would store NaN).
Eval mode reads the statistics without changing them.

Choices where the official code and the paper's formula differ (both documented in the tests):
- The official code clips ``theta + g_angle`` into [eps, pi - eps]. Here the lower clip is at 0 (cos(0) = 1: the
  high-norm target logit is flat, not rising, for theta < -g_angle), and instead of the upper clip the angular
  part uses ArcFace's monotonic fallback ``cos(theta) - g sin(g)`` where ``theta + g > pi``: the clip would make
  the target logit flat near pi (zero gradient for the worst samples) and slightly *above* ``s cos(theta)``.
  With these two choices the target logit is non-increasing in theta on [0, pi] and never above s cos(theta).
- The official code clamps every cosine (targets and non-targets) into [-1 + 1e-3, 1 - 1e-3] for stability;
  here angles come from clamped cosines with a bounded sin gradient (``base.angle``) and non-target logits are
  the plain ``s cos(theta_j)`` of the paper.
- The norms in z_hat are detached by default (``safe_norms.clone().detach()`` in the official code): the
  margin reads the feature norm as a quality signal but sends it no gradient. ``detach_norms=False`` is the
  named switch for the full derivative (the running statistics never carry a gradient either way).
"""

from __future__ import annotations

import torch
from torch import Tensor

from marginface.losses.base import MarginContext, MarginLoss, angle, sin_from_cos
from marginface.losses.registry import register

#: the official code's stability constants: norm clip range and the eps in the z_hat denominator
NORM_MIN, NORM_MAX, STD_EPS = 1e-3, 100.0, 1e-3


def shifted_cos(cos: Tensor, g: Tensor) -> Tensor:
    """(B,) ``cos(theta + g)`` for a per-sample angular margin g of either sign, kept monotonic in theta.

    g > 0 past pi: ArcFace's fallback ``cos(theta) - g sin(g)`` (``base.arc_margin``'s rule, which applies to
    positive margins only). g < 0 below 0: the angle is clipped at 0, i.e. the value is cos(0) = 1.
    """
    cos_g, sin_g = torch.cos(g), torch.sin(g)
    shifted = cos * cos_g - sin_from_cos(cos) * sin_g
    past_pi = (g > 0) & (cos < -cos_g)  # theta > pi - g
    shifted = torch.where(past_pi, cos - g * sin_g, shifted)
    below_zero = angle(cos) < -g  # theta + g < 0, possible only for g < 0
    return torch.where(below_zero, torch.ones_like(cos), shifted)


@register("adaface")
class AdaFaceLoss(MarginLoss):
    """Quality-adaptive margin. ``margin`` m in radians / cosine units (the same m scales both parts),
    ``h`` the concentration of z_hat, ``momentum`` the EMA weight of the current batch (the paper's alpha)."""

    def __init__(
        self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.4, h: float = 0.333,
        momentum: float = 0.01, detach_norms: bool = True,
    ) -> None:
        super().__init__(embedding_size, num_classes, scale=scale)
        if not 0 <= margin < torch.pi / 2:
            raise ValueError(f"margin must lie in [0, pi/2), got {margin}")
        if h < 0:
            raise ValueError(f"h (the z_hat concentration) must be >= 0, got {h}")
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must lie in (0, 1], got {momentum}")
        self.margin, self.h, self.momentum = float(margin), float(h), float(momentum)
        self.detach_norms = bool(detach_norms)
        self.register_buffer("batch_mean", torch.full((), 20.0))
        self.register_buffer("batch_std", torch.full((), 100.0))

    def safe_norms(self, norms: Tensor) -> Tensor:
        """(B,) the feature norms clipped to [0.001, 100] (the official code's ``safe_norms``), detached unless
        ``detach_norms`` is False."""
        clipped = norms.clamp(NORM_MIN, NORM_MAX)
        return clipped.detach() if self.detach_norms else clipped

    @torch.no_grad()
    def update_statistics(self, norms: Tensor) -> None:
        """One EMA step of ``batch_mean`` / ``batch_std`` from this batch's safe norms (training mode only)."""
        z = self.safe_norms(norms.detach()).to(self.batch_mean.dtype)
        self.batch_mean.copy_(self.momentum * z.mean() + (1.0 - self.momentum) * self.batch_mean)
        if z.numel() > 1:
            self.batch_std.copy_(self.momentum * z.std() + (1.0 - self.momentum) * self.batch_std)

    def margin_scaler(self, norms: Tensor) -> Tensor:
        """(B,) z_hat in [-1, 1] from the current statistics."""
        z = self.safe_norms(norms)
        mean, std = self.batch_mean.to(z.dtype), self.batch_std.to(z.dtype)
        return torch.clamp(self.h * (z - mean) / (std + STD_EPS), -1.0, 1.0)

    def update_state(self, ctx: MarginContext) -> None:
        self.update_statistics(ctx.norms)

    def target_transform(self, cos: Tensor, ctx: MarginContext) -> Tensor:
        z_hat = self.margin_scaler(ctx.norms)
        g_angle = -self.margin * z_hat
        g_add = self.margin + self.margin * z_hat
        return self.scale * (shifted_cos(cos, g_angle) - g_add)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, margin={self.margin}, h={self.h}, momentum={self.momentum}, "
                f"detach_norms={self.detach_norms}")
