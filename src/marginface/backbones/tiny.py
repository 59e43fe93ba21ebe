"""Tiny28: a three-layer CNN on the face pooled to 28x28, for studies that must fit a CPU.

Not a model to ship: it exists so that a comparison of many losses x seeds on real faces (docs/results.md) or an
AM-LFS search of B copies x R rounds (docs/amlfs.md) costs minutes per run on one CPU thread instead of the
half-hour of a MobileFaceNet. It keeps the backbone contract — (B, 3, 112, 112) in [-1, 1] -> (B, D), the
embedding options A-E — so everything downstream (training, evaluation, model cards, export) treats it like any
other backbone:

=========  ====================================  ==========
input      operator                              output
=========  ====================================  ==========
112x112x3  average pool 4x4 (stride 4)           28x28x3
28x28x3    conv3x3 stride 2 - BN - PReLU         14x14x32
14x14x32   conv3x3 stride 2 - BN - PReLU         7x7x64
7x7x64     conv3x3 stride 2 - BN - PReLU         4x4x128
4x4x128    embedding layer (option E: BN2d - Dropout - FC(2048 -> D) - BN1d)
=========  ====================================  ==========

About 2.3M multiply-adds for the trunk, ~100x fewer than MobileFaceNet's. The weights keep torch's default
initialisation, not the He-normal of the deeper backbones: the runs of docs/amlfs.md were made with it, and a
three-layer network trains well from it (docs/results.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_input, run_checkpointed
from .embedding import EmbeddingHead
from .mobilefacenet import ConvBNPReLU

POOL = 4  # 112 -> 28
WIDTHS = (32, 64, 128)
FINAL_SPATIAL = 4  # 28 -> 14 -> 7 -> 4 with stride 2, padding 1


class Tiny28(nn.Module):
    """(B, 3, 112, 112) -> average-pool to 28x28 -> 3 strided conv-BN-PReLU (32, 64, 128) -> embedding (B, D).

    Args:
        embedding_size: D.
        dropout: dropout probability in the embedding layer (before its FC).
        output: embedding-layer option ``"A"``..``"E"`` (see :mod:`marginface.backbones.embedding`).
        checkpointing: recompute each conv layer's activations during backward.
        fix_gamma: option E's final BatchNorm1d has a fixed scale of 1 (the ArcFace default; the AM-LFS
            presets set it false, as their runs were made).
    """

    def __init__(self, embedding_size: int = 512, dropout: float = 0.0, output: str = "E",
                 checkpointing: bool = False, fix_gamma: bool = True) -> None:
        super().__init__()
        self.embedding_size, self.checkpointing = embedding_size, checkpointing
        layers, channels = [], 3
        for width in WIDTHS:
            layers.append(ConvBNPReLU(channels, width, 3, stride=2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = EmbeddingHead(output, channels, FINAL_SPATIAL, embedding_size, dropout, "avg", fix_gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 112, 112) faces in [-1, 1] -> (B, embedding_size) embeddings (not normalised)."""
        check_input(x)
        x = F.avg_pool2d(x, POOL)
        for layer in self.features:
            x = run_checkpointed(layer, x) if self.checkpointing and self.training else layer(x)
        return self.head(x)
