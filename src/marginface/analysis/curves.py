"""What a margin does to the logits, computed by the losses themselves (no re-typed formula).

Every number here comes from :func:`logits_from_cosines`, which runs a loss's own element-wise pipeline
(``run_pipeline`` with the cosines as a ``DenseSimilarity``, see ``marginface.losses.base``) on cosines that
we choose, instead of on cosines computed from embeddings and centres. Because the margin is element-wise,
these are exactly the logits ``loss.logits`` gives for any embeddings and centres with those cosines (the
tests check it against ``loss.logits`` on constructed unit vectors).

- :func:`target_logit_curve`: the target logit, scale removed, against the target angle theta (the ArcFace
  paper's Fig. 5(a)).
- :func:`decision_boundary`: the binary-case boundary in the (theta1, theta2) plane, found by float64
  bisection on the difference of the two classes' logits (the ArcFace paper's Fig. 3 / Table 1).
- :func:`significance_curve`: AM-LFS's "relative significance" of the intra-class term: the ratio of the
  loss's gradient w.r.t. the target cosine to the summed gradient w.r.t. the non-target cosines, against the
  target probability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from marginface import losses
from marginface.losses.base import DenseSimilarity, MarginLoss

#: The loss set of the ArcFace paper's Fig. 5(a): (registry name, parameters). SphereFace's lambda is held at
#: its floor lambda_min = 5 (lambda_base 0), as in that figure; scales are irrelevant once divided out.
PAPER_LOSSES: list[tuple[str, dict[str, Any]]] = [
    ("softmax", {}),
    ("sphereface", {"margin": 4, "lambda_base": 0.0}),
    ("cosface", {"margin": 0.35}),
    ("arcface", {"margin": 0.5}),
    ("combined", {"m1": 1.0, "m2": 0.3, "m3": 0.2}),
]


@dataclass
class LossSpec:
    """A loss by registry name and parameters, with a printable label (``arcface(margin=0.5)``)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({inner})" if inner else self.name

    @classmethod
    def parse(cls, text: str) -> LossSpec:
        """``name`` or ``name:key=value,key=value`` (values parsed as YAML: numbers, booleans)."""
        import yaml

        name, _, rest = text.partition(":")
        params: dict[str, Any] = {}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"loss spec {text!r}: expected key=value after ':', e.g. arcface:margin=0.5")
            params[key.strip()] = yaml.safe_load(value)
        if name.strip() not in losses.available():
            raise ValueError(f"loss spec {text!r}: unknown loss {name!r}; available: {', '.join(losses.available())}")
        return cls(name.strip(), params)

    def build(self, num_classes: int = 2, embedding_size: int = 2) -> MarginLoss:
        """The loss in eval mode (running statistics frozen) and float64, so curves are exact and repeatable."""
        loss = losses.create(self.name, embedding_size=embedding_size, num_classes=num_classes, **self.params)
        return loss.double().eval()


def paper_specs() -> list[LossSpec]:
    return [LossSpec(name, dict(params)) for name, params in PAPER_LOSSES]


def logits_from_cosines(loss: MarginLoss, cosines: Tensor, labels: Tensor, norm: float = 1.0) -> Tensor:
    """(B, C) logits of a loss for given cosines, through its own pipeline (the same steps as ``loss.dense``).

    ``cosines`` (B, C): the similarity of each sample with every class (for plain softmax, the linear score
    ``W_j . x``, which equals the cosine for unit vectors and zero bias); ``labels`` (B,); ``norm``: the
    feature norm ||x|| (used by SphereFace, AdaFace, MagFace). Differentiable w.r.t. ``cosines``.
    """
    labels = labels.long()
    embeddings = torch.zeros(cosines.shape[0], loss.embedding_size, dtype=cosines.dtype)
    embeddings[:, 0] = norm
    source = DenseSimilarity(loss, labels, similarity=cosines)
    _, ctx = loss.run_pipeline(embeddings, labels, source)
    return source.logits(ctx)


def _pair_cosines(cos_target: Tensor, cos_other: Tensor) -> Tensor:
    return torch.stack([cos_target, cos_other], dim=1)


def target_logit_curve(spec: LossSpec, theta_deg: np.ndarray, nontarget_deg: float = 90.0) -> np.ndarray:
    """The target logit divided by the loss's scale at target angles ``theta_deg`` (degrees) -> (T,) float64.

    Binary case, the other class at ``nontarget_deg`` (only losses whose target logit depends on the other
    classes, e.g. AdaCos's dynamic scale, see it), unit feature norm.
    """
    loss = spec.build()
    theta = torch.as_tensor(np.radians(np.asarray(theta_deg, dtype=np.float64)))
    other = torch.full_like(theta, math.cos(math.radians(nontarget_deg)))
    with torch.no_grad():
        logits = logits_from_cosines(loss, _pair_cosines(torch.cos(theta), other), torch.zeros(len(theta)))
    return (logits[:, 0] / loss.scale).numpy()


def _logit_gap(loss: MarginLoss, theta1: Tensor, theta2: Tensor) -> Tensor:
    """(B,) target logit minus the other class's logit for a sample of class 1 at angles (theta1, theta2)."""
    logits = logits_from_cosines(loss, _pair_cosines(torch.cos(theta1), torch.cos(theta2)),
                                 torch.zeros(len(theta1)))
    return logits[:, 0] - logits[:, 1]


def decision_boundary(spec: LossSpec, theta1_deg: np.ndarray, iterations: int = 80) -> np.ndarray:
    """theta2 (degrees, (T,)) where a sample of class 1 at angle theta1 from its centre has equal logits for
    both classes; NaN where no theta2 in [0, 180] gives equality (always right or always wrong there).

    Class 2's boundary is the mirror image (swap the axes). Float64 bisection on the logit gap, which is
    non-decreasing in theta2 (the other class's logit falls as its angle grows), to ~1e-15 rad.
    """
    loss = spec.build()
    theta1 = torch.as_tensor(np.radians(np.asarray(theta1_deg, dtype=np.float64)))
    lo, hi = torch.zeros_like(theta1), torch.full_like(theta1, math.pi)
    with torch.no_grad():
        gap_lo, gap_hi = _logit_gap(loss, theta1, lo), _logit_gap(loss, theta1, hi)
        valid = (gap_lo <= 0) & (gap_hi >= 0)
        for _ in range(iterations):
            mid = (lo + hi) / 2
            below = _logit_gap(loss, theta1, mid) < 0
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    out = np.degrees(((lo + hi) / 2).numpy())
    out[~valid.numpy()] = np.nan
    return out


def significance_curve(spec: LossSpec, theta_deg: np.ndarray, num_classes: int = 10,
                       nontarget_deg: float = 90.0, norm: float = 1.0) -> dict[str, np.ndarray]:
    """AM-LFS's relative significance of the intra-class term against the target probability.

    For a sample at target angle theta (degrees, (T,)) with ``num_classes - 1`` non-target classes all at
    ``nontarget_deg`` and feature norm ``norm``: ``ratio = |dL/d cos theta_y| / sum_j |dL/d cos theta_j|``
    (L the loss's cross-entropy, gradients by autograd through the loss's own logits) and ``p_target``, the
    softmax probability of the target class. ``ratio`` is NaN where 1 - p_y < 1e-7 (gradients below float64
    resolution). Plain (normalised) softmax gives ratio 1 everywhere; a margin that reshapes the target logit
    changes how hard the loss pulls towards the own centre relative to pushing from the others.
    Returns ``{"theta", "p_target", "ratio"}``, each (T,) float64.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    loss = spec.build(num_classes=num_classes)
    theta = torch.as_tensor(np.radians(np.asarray(theta_deg, dtype=np.float64)))
    cos = torch.full((len(theta), num_classes), math.cos(math.radians(nontarget_deg)), dtype=torch.float64)
    cos[:, 0] = torch.cos(theta)
    cos.requires_grad_(True)
    labels = torch.zeros(len(theta), dtype=torch.long)
    logits = logits_from_cosines(loss, cos, labels, norm)
    F.cross_entropy(logits, labels, reduction="sum").backward()
    grad = cos.grad.abs()
    ratio = grad[:, 0] / grad[:, 1:].sum(dim=1)
    probs = torch.softmax(logits.detach(), dim=1)
    # Where 1 - p_y is below ~1e-7 the gradients (both proportional to it) lose their digits in float64.
    ratio[probs[:, 1:].sum(dim=1) < 1e-7] = float("nan")
    p_target = probs[:, 0]
    return {"theta": np.asarray(theta_deg, dtype=np.float64), "p_target": p_target.numpy(),
            "ratio": ratio.detach().numpy()}
