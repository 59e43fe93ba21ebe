"""What :func:`marginface.models.load_model` returns: a model, its card, and one ``forward`` on RGB pixels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from marginface.models.card import ModelCard

#: the formats :func:`marginface.models.load_model` reads, for error messages.
SUPPORTED = (".safetensors (marginface), .pth (arcface_torch IResNet/MobileFaceNet/ViT, CASIA MobileFaceNet), "
             ".onnx, MXNet prefix-0000.params + prefix-symbol.json")


@dataclass
class LoadedModel:
    """A model and its card. ``runner`` is an ``nn.Module`` (torch) or an onnxruntime session wrapper."""

    card: ModelCard
    path: str
    runner: Any
    kind: str  # "torch" or "onnx"
    device: str = "cpu"

    def normalise_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) RGB 0..255 -> the network's input per the card (channel order, (x - mean) / std)."""
        contract = self.card.input
        if contract.channel_order == "BGR":
            pixels = pixels.flip(1)
        mean = torch.tensor(contract.mean, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(contract.std, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
        return (pixels.float() - mean) / std

    def forward(self, pixels: torch.Tensor | np.ndarray) -> np.ndarray:
        """(B, 3, S, S) float RGB pixels 0..255 -> (B, D) float32 raw (un-normalised) embeddings."""
        pixels = torch.as_tensor(pixels, dtype=torch.float32)
        size = self.card.input.size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            raise ValueError(f"model input must be (B, 3, {size}, {size}), got {tuple(pixels.shape)}")
        if self.kind == "torch":
            with torch.inference_mode():
                out = self.runner(self.normalise_input(pixels.to(self.device)))
            return out.float().cpu().numpy()
        return self.runner(self.normalise_input(pixels).numpy())

    def embed_pixels(self, pixels: torch.Tensor | np.ndarray, flip: bool | None = None) -> np.ndarray:
        """(B, 3, S, S) RGB 0..255 -> (B, D) float32 L2-normalised, with flip TTA per the card by default.

        Flip TTA sums the raw embeddings of the crop and its mirror before normalising (insightface's rule).
        """
        flip = self.card.input.flip_tta if flip is None else flip
        pixels = torch.as_tensor(pixels, dtype=torch.float32)
        emb = self.forward(pixels)
        if flip:
            emb = emb + self.forward(pixels.flip(3))
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        if not np.isfinite(emb).all() or (norms == 0).any():
            raise ValueError(f"the model {self.path} produced NaN/inf or zero embeddings; check the weights")
        return (emb / norms).astype(np.float32)
