"""ElasticFace (Boutros et al., CVPR Workshops 2022, "ElasticFace: Elastic Margin Loss for Deep Face
Recognition").

ArcFace's / CosFace's fixed margin becomes a random one, drawn per sample and per training step from a normal
distribution N(margin, std):

    elasticface_arc:  target s cos(theta + m_i)  (ArcFace's monotonic fallback where theta + m_i > pi)
    elasticface_cos:  target s (cos(theta) - m_i)
    others:           s cos(theta_j)

Defaults are the official training configurations (fdbtrs/ElasticFace config/config.py and
config_ElasticCosFace.py): arc margin 0.5, cos margin 0.35, std 0.05 for both, scale 64. (The loss classes in
the official ``utils/losses.py`` default to std 0.0125, but the configs that trained the published models use
0.05.) Eval mode uses the mean margin. The official code has no fallback past pi (cos(theta + m) rises again
there); the fallback keeps the target logit decreasing in theta. The ElasticFace+ variant (margins sorted by
the target cosine) is not implemented.

Randomness: the draws are reproducible and resumable. Buffers ``seed`` (drawn from torch's global RNG at
construction unless given) and ``step`` (training-mode forwards so far) are in the state_dict; the margins of
step n come from a CPU ``torch.Generator`` seeded with (seed + n * 0x9E3779B9) mod 2^32, as float64 normals,
clipped at 0 (a negative margin would reward the target; 10 sigma away at the defaults), then cast to the
compute dtype and device. Under data parallelism every rank shares seed and step, so sample i
of every rank gets the same margin; pass a per-rank ``seed`` if that matters.
"""

from __future__ import annotations

import torch
from torch import Tensor

from marginface.losses.base import MarginContext, MarginLoss, arc_margin
from marginface.losses.registry import register

_GOLDEN = 0x9E3779B9  # spreads consecutive steps over the 32-bit seed space of the mt19937 generator


def margin_draws(seed: int, step: int, count: int, mean: float, std: float) -> Tensor:
    """(count,) float64 CPU margins of one training step: N(mean, std) from the (seed, step) generator."""
    gen = torch.Generator().manual_seed((seed + step * _GOLDEN) % 2**32)
    # clipped at 0: a negative margin would reward the target (a 10-sigma event at the defaults)
    return (torch.randn(count, generator=gen, dtype=torch.float64) * std + mean).clamp(min=0.0)


class ElasticMarginLoss(MarginLoss):
    """Shared by the two variants: per-sample margins in ``ctx.extras["margin"]`` (B,)."""

    def __init__(
        self, embedding_size: int, num_classes: int, scale: float, margin: float, std: float,
        seed: int | None = None,
    ) -> None:
        super().__init__(embedding_size, num_classes, scale=scale)
        if margin < 0:
            raise ValueError(f"margin (the mean of the margin distribution) must be >= 0, got {margin}")
        if std < 0:
            raise ValueError(f"std (of the margin distribution) must be >= 0, got {std}")
        self.margin, self.std = float(margin), float(std)
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()))
        self.register_buffer("seed", torch.tensor(int(seed), dtype=torch.long))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def current_margins(self, batch_size: int, like: Tensor) -> Tensor:
        """(B,) the margins of the current ``step`` in training mode, the mean in eval mode (no state change)."""
        if not self.training:
            return torch.full((batch_size,), self.margin, dtype=like.dtype, device=like.device)
        draws = margin_draws(int(self.seed), int(self.step), batch_size, self.margin, self.std)
        return draws.to(dtype=like.dtype, device=like.device)

    def sample_margins(self, batch_size: int, like: Tensor) -> Tensor:
        """(B,) this step's margins: a fresh draw in training mode (advancing ``step``), the mean in eval mode."""
        if self.training:
            self.step += 1
        return self.current_margins(batch_size, like)

    def update_state(self, ctx: MarginContext) -> None:
        self.step += 1  # one fresh draw per training step

    def add_extras(self, ctx: MarginContext) -> None:
        ctx.extras["margin"] = self.current_margins(ctx.labels.shape[0], ctx.target_similarity)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, std={self.std}"


@register("elasticface_arc")
class ElasticArcFaceLoss(ElasticMarginLoss):
    """ElasticFace-Arc: target ``s cos(theta + m_i)``, m_i ~ N(margin, std) in radians."""

    def __init__(
        self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.5, std: float = 0.05,
        seed: int | None = None,
    ) -> None:
        if not margin < torch.pi / 2:
            raise ValueError(f"margin (radians) must be < pi/2, got {margin}")
        super().__init__(embedding_size, num_classes, scale, margin, std, seed)

    def target_transform(self, cos: Tensor, ctx: MarginContext) -> Tensor:
        return self.scale * arc_margin(cos, ctx.extras["margin"])


@register("elasticface_cos")
class ElasticCosFaceLoss(ElasticMarginLoss):
    """ElasticFace-Cos: target ``s (cos(theta) - m_i)``, m_i ~ N(margin, std) in cosine units."""

    def __init__(
        self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.35,
        std: float = 0.05, seed: int | None = None,
    ) -> None:
        super().__init__(embedding_size, num_classes, scale, margin, std, seed)

    def target_transform(self, cos: Tensor, ctx: MarginContext) -> Tensor:
        return self.scale * (cos - ctx.extras["margin"])
