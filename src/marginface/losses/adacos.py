"""AdaCos (Zhang et al., CVPR 2019, "AdaCos: Adaptively Scaling Cosine Logits for Effectively Learning Deep
Face Representations").

No margin: every logit is ``s cos(theta_j)``; only the scale adapts.

- Fixed AdaCos (``dynamic=False``): ``s = sqrt(2) log(C - 1)`` (paper Eq. 13), constant.
- Dynamic AdaCos (default, Algorithm 1): s starts at the fixed value; at each training-mode forward, before the
  logits are computed,

      B_avg   = (1/N) sum_i sum_{j != y_i} exp(s_old cos(theta_ij))     (s_old: the scale of the previous step)
      theta_m = median_i theta_{i, y_i}                                 (the batch's target angles)
      s       = log(B_avg) / cos(min(pi/4, theta_m))

  and the new s scales this batch's logits. s is a buffer (``adaptive_scale``) in the state_dict; eval mode
  uses it without updating it. s carries no gradient (the paper treats it as a constant of each step).

The all-class sum comes through ``class_statistic`` (additive over class slices, so a chunked or sharded head
can sum it chunk by chunk). Choices: the median of an even-sized batch is the lower of the two middle values
(``torch.median``'s convention; the paper does not say); exp(s cos) is summed in the compute dtype, which in
float32 holds for s up to ~80 (the dynamic s stays near sqrt(2) log(C - 1) ~ 16 for C = 100k in practice);
the new s is floored at ``MIN_SCALE`` (a few-class batch whose non-target cosines are all far below 0 has
log(B_avg) < 0, which would flip the sign of every logit).
``scale`` is the fixed value sqrt(2) log(C - 1) and cannot be set. The third-party pytorch-adacos code adds an
ArcFace margin and takes the median over all angles; the paper does neither.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from marginface.losses.base import MarginContext, MarginLoss, angle
from marginface.losses.registry import register

#: floor of the dynamic scale: log(B_avg) < 0 (every non-target cosine far below 0 with few classes) would give a
#: negative scale; from the floor the next step's B_avg ~ C - 1 restores s ~ log(C - 1) / cos(theta_med).
MIN_SCALE = 1e-3


def fixed_scale(num_classes: int) -> float:
    """The fixed AdaCos scale sqrt(2) log(C - 1) (paper Eq. 13)."""
    return math.sqrt(2.0) * math.log(num_classes - 1)


@register("adacos")
class AdaCosLoss(MarginLoss):
    """Adaptive scale, no margin; ``dynamic`` selects Algorithm 1 (default) or the fixed scale."""

    def __init__(self, embedding_size: int, num_classes: int, dynamic: bool = True) -> None:
        if not isinstance(num_classes, int) or num_classes < 3:
            raise ValueError(f"AdaCos needs num_classes >= 3 (its scale is sqrt(2) log(C - 1)), got {num_classes!r}")
        super().__init__(embedding_size, num_classes, scale=fixed_scale(num_classes))
        self.dynamic = bool(dynamic)
        self.needs_class_statistic = self.dynamic
        self.register_buffer("adaptive_scale", torch.tensor(self.scale))

    def class_statistic(self, similarity: Tensor, target_mask: Tensor) -> Tensor:
        """(B,) sum over the slice's non-target classes of exp(s_old cos(theta_ij)), without gradient."""
        with torch.no_grad():
            terms = torch.exp(self.adaptive_scale.to(similarity.dtype) * similarity)
            return terms.masked_fill(target_mask, 0.0).sum(dim=1)

    @torch.no_grad()
    def update_scale(self, target_similarity: Tensor, class_statistic: Tensor) -> None:
        """One step of Algorithm 1 from this batch's non-target sums and target cosines."""
        b_avg = class_statistic.to(self.adaptive_scale.dtype).mean()
        theta_med = angle(target_similarity.detach().to(self.adaptive_scale.dtype)).median()
        new_scale = torch.log(b_avg) / torch.cos(torch.clamp(theta_med, max=math.pi / 4))
        self.adaptive_scale.copy_(new_scale.clamp(min=MIN_SCALE))

    def update_state(self, ctx: MarginContext) -> None:
        if self.dynamic:
            if ctx.class_statistic is None:
                raise ValueError("dynamic AdaCos needs class_statistic (the summed exp(s cos) of the non-targets)")
            self.update_scale(ctx.target_similarity, ctx.class_statistic)

    def target_transform(self, cos: Tensor, ctx: MarginContext) -> Tensor:
        return self.adaptive_scale.to(cos.dtype) * cos

    def nontarget_logits(self, similarity: Tensor, ctx: MarginContext) -> Tensor:
        return self.adaptive_scale.to(similarity.dtype) * similarity

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dynamic={self.dynamic}, adaptive_scale={float(self.adaptive_scale):.4f}"
