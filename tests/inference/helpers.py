"""Tiny models with cards for the inference tests."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from marginface import backbones
from marginface.inference import ModelCard, tensors_sha256

LFW = "lfw/lfw-deepfunneled"


def save_tiny(path: Path, name: str = "mobilefacenet", d: int = 32, seed: int = 0, flip: bool = True,
              threshold: float | None = None) -> Path:
    """A random-init backbone with a card at ``path`` (safetensors, ``backbone.``-prefixed like training)."""
    torch.manual_seed(seed)
    model = backbones.create(name, embedding_size=d)
    _fit_batchnorm(model)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    card = ModelCard(backbone=name, embedding_size=d, weights_sha256=tensors_sha256(state), source="test")
    card.input.flip_tta = flip
    if threshold is not None:
        card.thresholds = {"default": threshold}
    save_file({f"backbone.{k}": v for k, v in state.items()}, str(path), metadata=card.metadata())
    return path


def _fit_batchnorm(model: torch.nn.Module) -> None:
    """Set BatchNorm running statistics from two batches of smooth random images, so that the random-init
    network separates different inputs (with init statistics its outputs are nearly input-independent)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average
    model.train()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(2):
            small = torch.rand(16, 3, 7, 7, generator=generator) * 2 - 1
            model(torch.nn.functional.interpolate(small, size=112, mode="bilinear"))
    model.eval()
