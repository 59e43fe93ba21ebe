"""Reading a run for the figures: theta distributions of its checkpoints over a data set, and logged series.

A run folder (``marginface train`` / ``marginface demo``) holds ``config.json``, ``log.csv`` and
``checkpoints/step_<N>/model.safetensors`` (backbone and loss, class centres included). From those,
:func:`checkpoint_angles` rebuilds the model of any checkpoint and measures theta_y and the nearest non-target
angle over (a deterministic sample of) the run's training images -- the ArcFace paper's Fig. 5(b) setting.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from marginface.losses.angles import embedding_angles


def list_checkpoints(run_dir: str | Path) -> dict[int, Path]:
    """{step: folder} of a run's complete checkpoints, sorted by step."""
    root = Path(run_dir) / "checkpoints"
    found = {int(p.name.split("_")[1]): p for p in root.glob("step_*")
             if p.is_dir() and not p.name.endswith(".tmp") and (p / "model.safetensors").is_file()}
    return dict(sorted(found.items()))


def pick_steps(available: list[int], wanted: list[int] | None) -> list[int]:
    """``wanted`` (each must exist) or, by default, the first, middle and last of ``available``."""
    if not available:
        raise FileNotFoundError("the run has no checkpoints (checkpoints/step_*/model.safetensors); train first")
    if wanted:
        missing = sorted(set(wanted) - set(available))
        if missing:
            raise ValueError(f"no checkpoint at step(s) {missing}; available: {available}")
        return list(wanted)
    return sorted({available[0], available[len(available) // 2], available[-1]})


def load_run_model(run_dir: str | Path, step: int):
    """(backbone, loss, dataset) of checkpoint ``step`` of a run, on the CPU, in eval mode."""
    from marginface import backbones, losses
    from marginface.training.checkpoint import load_model_tensors
    from marginface.training.config import config_from_dict
    from marginface.training.data import build_dataset
    from marginface.training.reshard import SavedStep

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: is {run_dir} a marginface run folder?")
    cfg = config_from_dict(json.loads(config_path.read_text()))
    dataset = build_dataset(cfg.data)
    backbone = backbones.create(cfg.model.backbone, embedding_size=cfg.model.embedding_size,
                                dropout=cfg.model.dropout, output=cfg.model.output)
    loss = losses.create(cfg.loss.name, embedding_size=cfg.model.embedding_size,
                         num_classes=dataset.num_classes, **cfg.loss.params)
    folder = list_checkpoints(run_dir).get(step)
    if folder is None:
        raise ValueError(f"{run_dir}: no checkpoint at step {step}")
    # the whole centre matrix, however many shards the run saved it in (training/reshard.py)
    weights = SavedStep(run_dir, step).files_for(1, 0, dataset.num_classes, optimizer_ids={}).model
    load_model_tensors(weights, backbone, loss)
    return backbone.eval(), loss.eval(), dataset


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
