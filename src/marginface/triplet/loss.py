"""Triplet loss on L2-normalised embeddings, with in-batch mining (the ArcFace paper §3.5's fine-tuning stage).

Distances between unit vectors ``u, v`` (cosine ``c = u . v``), computed in float32 with autocast disabled:

- ``squared_euclidean`` (default; FaceNet and the ArcFace paper): ``d = ||u - v||^2 = 2 - 2c``, in [0, 4];
  the margin is in the same units (FaceNet's alpha = 0.2).
- ``euclidean``: ``d = ||u - v||`` via a safe square root (``sqrt(max(2 - 2c, eps))``): its gradient at a
  duplicate pair is 0 instead of inf/NaN.
- ``angular``: ``d = theta = arccos(c)`` with ``c`` clamped to ``[-1 + eps, 1 - eps]`` (finite gradient), the
  margin in radians: the paper's stated future work, a triplet margin on the angle.

For an anchor ``a``, positive ``p`` (same label, ``p != a``) and negative ``n`` (other label) the triplet's loss
is ``relu(d(a, p) - d(a, n) + margin)``. Mining picks which triplets of the batch count:

- ``batch_hard`` (Hermans et al. 2017): per anchor, its farthest positive and nearest negative; the mean over
  anchors that have at least one positive and one negative.
- ``batch_all``: every valid triplet; the mean over the *active* ones (loss > 0) only, so that the many easy
  triplets do not dilute the gradient; 0 when none is active.
- ``semi_hard`` (FaceNet §3.2): per (anchor, positive) pair, the nearest negative that is farther than the
  positive, ``d(a, n) > d(a, p)`` — a semi-hard one when it also lies within the margin, else the pair's loss is
  0. When the pair has no such negative (every negative is closer than the positive), ``semi_hard_fallback``
  decides: ``"farthest"`` (default; the convention of TensorFlow's ``triplet_semihard_loss``) takes the
  farthest negative, the least hard of the hard ones; ``"skip"`` drops the pair. The mean is over the pairs
  kept. ``last_stats["fallback_pairs"]`` counts the pairs that needed the fallback.

The loss owns no parameters (no class centres): it is not in :mod:`marginface.losses`, whose contract is a loss
that owns ``weight (C, D)`` and whose margin is element-wise per class; a triplet loss is a function of the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DISTANCES = ("squared_euclidean", "euclidean", "angular")
MININGS = ("batch_hard", "batch_all", "semi_hard")
FALLBACKS = ("farthest", "skip")
EPS = 1e-6
"""Clamp of the cosine for arccos (angular) and floor of the squared distance under the square root (euclidean)."""


def pairwise_distances(embeddings: torch.Tensor, distance: str = "squared_euclidean") -> torch.Tensor:
    """``(B, D)`` embeddings (any norm, any dtype) -> ``(B, B)`` float32 distances of their L2-normalised rows.

    A zero row normalises to the zero vector (``F.normalize``'s eps); its distances are then those of a point at
    the origin (``2 - 2*0 = 2`` squared), finite with finite gradients.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    with torch.autocast(embeddings.device.type, enabled=False):  # bf16 cosines would round d(a,p) - d(a,n)
        unit = F.normalize(embeddings.float(), dim=1)
        cosine = unit @ unit.t()
        if distance == "angular":
            return torch.acos(cosine.clamp(-1.0 + EPS, 1.0 - EPS))
        squared = (2.0 - 2.0 * cosine).clamp_min(0.0)
        if distance == "euclidean":
            return squared.clamp_min(EPS).sqrt()  # safe sqrt: gradient 0 (not inf) below EPS
        return squared


def _masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, B)`` boolean masks: positive pairs (same label, off-diagonal) and negative pairs (other label)."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def batch_hard(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Farthest positive, nearest negative per anchor; mean over anchors having both."""
    pos, neg = _masks(labels)
    valid = pos.any(1) & neg.any(1)
    hardest_pos = dist.masked_fill(~pos, -math.inf).amax(1)
    hardest_neg = dist.masked_fill(~neg, math.inf).amin(1)
    losses = F.relu(hardest_pos - hardest_neg + margin)[valid]
    stats = {"anchors": float(valid.sum()), "active": float((losses > 0).sum())}
    return (losses.mean() if len(losses) else dist.sum() * 0.0), stats


def batch_all(dist: torch.Tensor, labels: torch.Tensor, margin: float,
              max_elements: int = 1 << 24) -> tuple[torch.Tensor, dict[str, float]]:
    """Every valid triplet; mean over the active ones. Anchors go in chunks so that at most ``max_elements``
    triplet values exist at once (B^3 floats is 512 MiB at B = 512)."""
    pos, neg = _masks(labels)
    total, active, triplets = dist.sum() * 0.0, 0, 0
    chunk = max(1, max_elements // max(1, dist.shape[0] ** 2))
    for start in range(0, dist.shape[0], chunk):
        rows = slice(start, start + chunk)
        d = dist[rows]
        valid = pos[rows][:, :, None] & neg[rows][:, None, :]  # (a, p, n)
        values = F.relu(d[:, :, None] - d[:, None, :] + margin) * valid
        total = total + values.sum()
        active += int((values > 0).sum())
        triplets += int(valid.sum())
    stats = {"triplets": float(triplets), "active": float(active)}
    return total / max(active, 1), stats


def semi_hard(dist: torch.Tensor, labels: torch.Tensor, margin: float,
              fallback: str = "farthest") -> tuple[torch.Tensor, dict[str, float]]:
    """FaceNet's rule per (anchor, positive) pair: the nearest negative farther than the positive."""
    pos, neg = _masks(labels)
    a_idx, p_idx = pos.nonzero(as_tuple=True)
    d_ap = dist[a_idx, p_idx]  # (P,)
    d_an = dist[a_idx]  # (P, B)
    neg_rows = neg[a_idx]
    farther = neg_rows & (d_an > d_ap[:, None])
    has_farther = farther.any(1)
    nearest_farther = d_an.masked_fill(~farther, math.inf).amin(1)
    has_neg = neg_rows.any(1)
    if fallback == "farthest":
        chosen = torch.where(has_farther, nearest_farther, d_an.masked_fill(~neg_rows, -math.inf).amax(1))
        keep = has_neg
    else:
        chosen, keep = nearest_farther, has_farther
    losses = F.relu(d_ap - chosen + margin)[keep]
    stats = {"pairs": float(keep.sum()), "fallback_pairs": float((has_neg & ~has_farther).sum()),
             "active": float((losses > 0).sum())}
    return (losses.mean() if len(losses) else dist.sum() * 0.0), stats


class TripletLoss(nn.Module):
    """``loss(embeddings (B, D), labels (B,)) -> scalar``: mined triplet loss on L2-normalised embeddings.

    Args:
        margin: in the units of ``distance`` (squared Euclidean: FaceNet's 0.2; angular: radians).
        distance: ``squared_euclidean``, ``euclidean`` or ``angular`` (see the module docstring).
        mining: ``batch_hard``, ``batch_all`` or ``semi_hard``.
        semi_hard_fallback: ``farthest`` or ``skip``, for pairs without a negative farther than the positive.

    ``last_stats`` holds the counts of the last call (anchors / triplets / pairs, active, fallback pairs) as
    floats, for logging. The batch needs several images per identity: use the P x K sampler
    (:mod:`marginface.training.pk_sampler`).
    """

    def __init__(self, margin: float = 0.2, distance: str = "squared_euclidean", mining: str = "batch_hard",
                 semi_hard_fallback: str = "farthest") -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"triplet distance must be one of {DISTANCES}, got {distance!r}")
        if mining not in MININGS:
            raise ValueError(f"triplet mining must be one of {MININGS}, got {mining!r}")
        if semi_hard_fallback not in FALLBACKS:
            raise ValueError(f"triplet semi_hard_fallback must be one of {FALLBACKS}, got {semi_hard_fallback!r}")
        if not margin > 0:
            raise ValueError(f"triplet margin must be > 0, got {margin}")
        self.margin, self.distance, self.mining, self.fallback = float(margin), distance, mining, semi_hard_fallback
        self.last_stats: dict[str, float] = {}

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
            raise ValueError(f"expected embeddings (B, D) and labels (B,), got {tuple(embeddings.shape)} and "
                             f"{tuple(labels.shape)}")
        if embeddings.shape[0] == 0:
            raise ValueError("an empty batch (0 embeddings): the triplet loss over no samples is undefined; skip "
                             "the step")
        dist = pairwise_distances(embeddings, self.distance)
        if self.mining == "batch_hard":
            loss, self.last_stats = batch_hard(dist, labels, self.margin)
        elif self.mining == "batch_all":
            loss, self.last_stats = batch_all(dist, labels, self.margin)
        else:
            loss, self.last_stats = semi_hard(dist, labels, self.margin, self.fallback)
        return loss

    def extra_repr(self) -> str:
        return f"margin={self.margin}, distance={self.distance}, mining={self.mining}"
