"""Angles between embeddings and a loss's class centres: theta_y (own centre) and the nearest non-target angle.

The ArcFace paper (Fig. 5(b)) reads a model through the distribution of theta_y over the training data at the
start, middle and end of training. :func:`embedding_angles` computes both angles for any loss's centres;
:func:`angle_histogram` bins them on fixed bins (so histograms of different steps and runs compare);
:class:`ThetaRecorder` records them from the batches a head already receives — a hook on the head's input, no
extra forward pass (the trainer registers it for ``analysis.theta_every``: ``training/trainer.py``).

Here, beside the losses, because both the trainer (which records) and ``marginface.analysis`` (which draws) use
it, and training may not import analysis.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from marginface.losses.base import MarginLoss

#: Fixed histogram bins over [0, 180] degrees: 36 bins of 5 degrees.
HIST_BINS = 36
HIST_RANGE = (0.0, 180.0)
QUANTILES = (0.1, 0.5, 0.9)
#: classes per block when computing nearest non-target angles (bounds the (B, c) cosine block).
CLASS_BLOCK = 65536


def class_cosines(loss: MarginLoss, features: Tensor, first: int, last: int) -> Tensor:
    """(B, c) cosines of unit ``features`` (B, D) with the centres of classes [first, last) (max over
    sub-centres for sub-center ArcFace). Plain softmax's score is not a cosine: its angle is taken directly."""
    rows = loss.weight[first:last].to(features.dtype)
    if loss.normalizes_features:
        return loss.similarity(features, rows, torch.arange(first, last, device=features.device))
    return features @ F.normalize(rows, dim=-1).t()


@torch.no_grad()
def embedding_angles(loss: MarginLoss, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """theta_y and the nearest non-target angle, in degrees, float32 (B,) each, for embeddings (B, D).

    theta_y is the angle to the sample's own class centre; the nearest non-target angle is the smallest
    angle to any other centre. Computed block by block over classes, so (B, C) is never held.
    """
    feats = F.normalize(embeddings.detach().float(), dim=1)
    labels = labels.long()
    target = torch.empty(len(labels), dtype=torch.float32, device=feats.device)
    nearest = torch.full_like(target, -2.0)
    for first in range(0, loss.weight.shape[0], CLASS_BLOCK):
        last = min(first + CLASS_BLOCK, loss.weight.shape[0])
        cos = class_cosines(loss, feats, first, last).float()
        own = (labels >= first) & (labels < last)
        target[own] = cos[own, labels[own] - first]
        cos[own, labels[own] - first] = -2.0  # exclude the own class from the nearest non-target
        nearest = torch.maximum(nearest, cos.amax(dim=1))
    return torch.rad2deg(torch.acos(target.clamp(-1, 1))), torch.rad2deg(torch.acos(nearest.clamp(-1, 1)))


def angle_histogram(angles_deg: Tensor | np.ndarray, bins: int = HIST_BINS,
                    value_range: tuple[float, float] = HIST_RANGE) -> np.ndarray:
    """(bins,) int64 counts of angles on fixed, equal bins over ``value_range`` (last bin closed), numpy's
    convention; angles lie in [0, 180] so the counts sum to the number of angles."""
    values = angles_deg.detach().cpu().numpy() if torch.is_tensor(angles_deg) else np.asarray(angles_deg)
    counts, _ = np.histogram(values.astype(np.float64), bins=bins, range=value_range)
    return counts


def bin_edges(bins: int = HIST_BINS, value_range: tuple[float, float] = HIST_RANGE) -> np.ndarray:
    return np.linspace(value_range[0], value_range[1], bins + 1)


def angle_statistics(theta_y: Tensor, theta_nn: Tensor) -> dict[str, float]:
    """Mean, quantiles and fixed-bin histogram counts of both angles, as flat log keys.

    Keys: ``theta_y_mean``, ``theta_y_p10/p50/p90``, ``theta_y_hist_00..35`` and the same with ``theta_nn``.
    """
    out: dict[str, float] = {}
    for name, values in (("theta_y", theta_y), ("theta_nn", theta_nn)):
        values = values.detach().float().cpu()
        out[f"{name}_mean"] = float(values.mean())
        for q, v in zip(QUANTILES, torch.quantile(values, torch.tensor(QUANTILES))):
            out[f"{name}_p{round(q * 100):02d}"] = float(v)
        for i, count in enumerate(angle_histogram(values)):
            out[f"{name}_hist_{i:02d}"] = float(count)
    return out


class ThetaRecorder:
    """Angle statistics of the training batch every N steps (the trainer's ``analysis.theta_every``).

    A forward pre-hook on the head sees the embeddings (B, D) and labels the head is about to use; on a
    recording step (``step_fn() % every == 0``, i.e. the batch that is trained on after that many updates,
    step 0 included) it computes angles to the loss's current centres under no_grad. Micro-batches of one step
    are pooled. Nothing is recomputed: no backbone forward is added. Also records the mean target logit with
    the scale divided out (eval-mode context, so no running statistic advances), when the loss has no
    class-wide statistic.
    """

    def __init__(self, loss: MarginLoss, every: int, step_fn: Callable[[], int]) -> None:
        if every < 1:
            raise ValueError(f"analysis.theta_every must be >= 1 to record, got {every}")
        self.loss, self.every, self.step_fn = loss, every, step_fn
        self._step: int | None = None
        self._parts: list[tuple[Tensor, Tensor, Tensor | None]] = []

    def attach(self, head: nn.Module) -> torch.utils.hooks.RemovableHandle:
        return head.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple) -> None:
        step = self.step_fn()
        if step % self.every:
            return
        embeddings, labels = args[0], args[1]
        if self._step != step:
            self._step, self._parts = step, []
        theta_y, theta_nn = embedding_angles(self.loss, embeddings, labels)
        self._parts.append((theta_y, theta_nn, self._target_logit(embeddings, labels)))

    @torch.no_grad()
    def _target_logit(self, embeddings: Tensor, labels: Tensor) -> Tensor | None:
        loss = self.loss
        if loss.needs_class_statistic:
            return None
        feats = loss.features(embeddings.detach())
        target = loss.target_similarity(feats, labels.long())
        was_training = loss.training
        loss.eval()  # eval mode: the context must not advance running state (SphereFace's step, EMAs)
        try:
            ctx = loss.make_context(embeddings.detach(), labels.long(), target)
        finally:
            loss.train(was_training)
        return ctx.target_logit.float() / loss.scale

    def pop(self) -> tuple[int, dict[str, float]] | None:
        """``(step, statistics)`` of the last recorded step, once; None when nothing new was recorded."""
        if not self._parts:
            return None
        theta_y = torch.cat([p[0] for p in self._parts])
        theta_nn = torch.cat([p[1] for p in self._parts])
        stats = angle_statistics(theta_y, theta_nn)
        logits = [p[2] for p in self._parts if p[2] is not None]
        if logits:
            stats["target_logit_mean"] = float(torch.cat(logits).mean())
        step, self._parts = self._step, []
        return step, stats
