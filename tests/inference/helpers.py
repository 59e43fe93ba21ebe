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
    model = backbones.create(name, embedding_size=d).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    card = ModelCard(backbone=name, embedding_size=d, weights_sha256=tensors_sha256(state), source="test")
    card.input.flip_tta = flip
    if threshold is not None:
        card.thresholds = {"default": threshold}
    save_file({f"backbone.{k}": v for k, v in state.items()}, str(path), metadata=card.metadata())
    return path
