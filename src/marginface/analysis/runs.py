"""Reading a run for the figures: theta distributions of its checkpoints over a data set, and logged series.

A run folder (``marginface train`` / ``marginface demo``; its layout: :mod:`marginface.runs`) holds the run's
configuration, its log and its checkpoints (backbone and loss, class centres included). From those,
:func:`checkpoint_angles` rebuilds the model of any checkpoint (``marginface.runs.model``) and measures theta_y
and the nearest non-target angle over (a deterministic sample of) the run's training images -- the ArcFace
paper's Fig. 5(b) setting.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from marginface.losses.angles import embedding_angles
from marginface.runs.layout import RunDir
from marginface.runs.model import load_run_model  # noqa: F401  (moved to marginface.runs.model; one release)


def list_checkpoints(run_dir: str | Path) -> dict[int, Path]:
    """{step: folder} of a run's complete checkpoints, sorted by step (``RunDir.step_folders``)."""
    return RunDir(run_dir).step_folders()


def pick_steps(available: list[int], wanted: list[int] | None) -> list[int]:
    """``wanted`` (each must exist) or, by default, the first, middle and last of ``available``."""
    if not available:
        raise FileNotFoundError("the run has no complete checkpoint; train first")
    if wanted:
        missing = sorted(set(wanted) - set(available))
        if missing:
            raise ValueError(f"no checkpoint at step(s) {missing}; available: {available}")
        return list(wanted)
    return sorted({available[0], available[len(available) // 2], available[-1]})


def sample_indices(size: int, count: int) -> np.ndarray:
    """``count`` evenly spaced indices of a data set of ``size`` (all of it when count >= size)."""
    return np.arange(size) if count >= size else np.linspace(0, size - 1, count).round().astype(np.int64)


@torch.no_grad()
def checkpoint_angles(run_dir: str | Path, step: int, max_images: int = 1000,
                      batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """theta_y and nearest non-target angles (degrees, (N,) each) of checkpoint ``step`` over the run's
    training images (``max_images`` evenly spaced ones; no flip, eval mode)."""
    backbone, loss, dataset = load_run_model(run_dir, step)
    indices = sample_indices(len(dataset), max_images)
    theta_y, theta_nn = [], []
    for start in range(0, len(indices), batch_size):
        items = [dataset[int(i)] for i in indices[start:start + batch_size]]
        images = torch.stack([image for image, _ in items])
        labels = torch.tensor([label for _, label in items])
        t_y, t_nn = embedding_angles(loss, backbone(images), labels)
        theta_y.append(t_y.numpy())
        theta_nn.append(t_nn.numpy())
    return np.concatenate(theta_y), np.concatenate(theta_nn)
