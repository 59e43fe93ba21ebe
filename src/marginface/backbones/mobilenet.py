"""MobileNet (V1; Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications", 2017, table 1) adapted to 112x112 faces as the ArcFace paper compared it.

The ArcFace paper's MobileNet is insightface's ``fmobilenet`` symbol (its public mxnet code, read and written
anew here): the ImageNet network with its first convolution at **stride 1**, so a 112x112 face goes through the
same 112 -> 56 -> 28 -> 14 -> 7 maps as a 224x224 image through the original (whose first conv has stride 2),
and every BN is followed by PReLU (insightface's ``net_act``) instead of ReLU:

=========  ===========================================  ==============
input      operator (width multiplier alpha = 1)        output
=========  ===========================================  ==============
112x112x3  conv3x3 stride 1                             112x112x32
112x112    dw3x3 s1, pw 64                              112x112x64
112x112    dw3x3 s2, pw 128 ; dw3x3 s1, pw 128          56x56x128
56x56      dw3x3 s2, pw 256 ; dw3x3 s1, pw 256          28x28x256
28x28      dw3x3 s2, pw 512 ; 5 x (dw3x3 s1, pw 512)    14x14x512
14x14      dw3x3 s2, pw 1024 ; dw3x3 s1, pw 1024        7x7x1024
=========  ===========================================  ==============

Every conv is bias-free and followed by BN and PReLU; the 7x7 map then goes to the embedding layer (option E by
default: BN2d - Dropout - FC(7·7·1024 -> D) - BN1d). ``width_mult`` scales every width (insightface's
``net_multiplier``).
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_input, run_checkpointed
from .embedding import EmbeddingHead
from .iresnet import _init_weights
from .mobilefacenet import ConvBNPReLU

# (output channels at width 1, stride of the depthwise conv) of the 13 depthwise-separable blocks of table 1.
SEPARABLE_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


class SeparableBlock(nn.Sequential):
    """Depthwise 3x3 (stride) - BN - PReLU, pointwise 1x1 - BN - PReLU: (B, C_in, H, W) -> (B, C_out, H/s, W/s)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(ConvBNPReLU(in_channels, in_channels, 3, stride, groups=in_channels),
                         ConvBNPReLU(in_channels, out_channels, 1))


class MobileNet(nn.Module):
    """MobileNet V1 for faces: (B, 3, 112, 112) in [-1, 1] -> (B, embedding_size).

    Args:
        embedding_size: D.
        dropout: dropout probability in the embedding layer (before its FC).
        output: embedding-layer option ``"A"``..``"E"`` (see :mod:`marginface.backbones.embedding`).
        width_mult: alpha, the width multiplier (1.0 or e.g. 0.5); widths are rounded to integers.
        checkpointing: recompute each separable block's activations during backward.
        fix_gamma: option E's final BatchNorm1d has a fixed scale of 1.
    """

    def __init__(self, embedding_size: int = 512, dropout: float = 0.0, output: str = "E", width_mult: float = 1.0,
                 checkpointing: bool = False, fix_gamma: bool = True) -> None:
        super().__init__()
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        self.embedding_size, self.checkpointing = embedding_size, checkpointing
        stem = max(1, round(32 * width_mult))
        self.conv1 = ConvBNPReLU(3, stem, 3, stride=1)
        blocks, channels = [], stem
        for width, stride in SEPARABLE_BLOCKS:
            out = max(1, round(width * width_mult))
            blocks.append(SeparableBlock(channels, out, stride))
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.head = EmbeddingHead(output, channels, 7, embedding_size, dropout, "avg", fix_gamma)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 112, 112) faces in [-1, 1] -> (B, embedding_size) embeddings (not normalised)."""
        check_input(x)
        x = self.conv1(x)
        for block in self.blocks:
            x = run_checkpointed(block, x) if self.checkpointing and self.training else block(x)
        return self.head(x)
