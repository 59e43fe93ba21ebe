"""MobileFaceNet (Chen et al., "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face Verification on
Mobile Devices", 2018), following table 1 of the paper:

=========  ======================  ===  ====  ===  ===  =================
input      operator                t    c     n    s    output
=========  ======================  ===  ====  ===  ===  =================
112x112x3  conv3x3                 -    64    1    2    56x56x64
56x56x64   depthwise conv3x3       -    64    1    1    56x56x64
56x56x64   bottleneck              2    64    5    2    28x28x64
28x28x64   bottleneck              4    128   1    2    14x14x128
14x14x128  bottleneck              2    128   6    1    14x14x128
14x14x128  bottleneck              4    128   1    2    7x7x128
7x7x128    bottleneck              2    128   2    1    7x7x128
7x7x128    conv1x1                 -    512   1    1    7x7x512
7x7x512    linear GDConv7x7        -    512   1    1    1x1x512
1x1x512    linear conv1x1          -    D     1    1    D
=========  ======================  ===  ====  ===  ===  =================

Bottlenecks are MobileNetV2's (1x1 expand by t, depthwise 3x3, linear 1x1 projection; residual when the
stride is 1 and the width is unchanged) with PReLU instead of ReLU6, as in the paper.  The last two rows are
the embedding layer; by default (``output="E"`` with ``pool="gdc"``) it is
BN2d - Dropout - GDConv7x7 + BN - FC(512 -> D) - BN1d, the paper's layer plus the ArcFace option-E
normalisations.  The paper's 0.99M parameters / 221M MACs are for D = 128.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_input, run_checkpointed
from .embedding import EmbeddingHead
from .iresnet import _init_weights

# (expansion t, output channels c, repeats n, first stride s), rows 3-7 of table 1.
BOTTLENECKS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class ConvBNPReLU(nn.Sequential):
    """Conv (no bias) - BN - PReLU; ``groups=in_channels`` makes it depthwise."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.PReLU(out_channels),
        )


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand (t) - PReLU, depthwise 3x3 (stride) - PReLU, linear 1x1 projection.

    (B, C_in, H, W) -> (B, C_out, H / stride, W / stride); the input is added back when shapes allow.
    """

    def __init__(self, in_channels: int, out_channels: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.expand = ConvBNPReLU(in_channels, hidden, 1)
        self.depthwise = ConvBNPReLU(hidden, hidden, 3, stride, groups=hidden)
        self.project = nn.Sequential(nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


class MobileFaceNet(nn.Module):
    """MobileFaceNet backbone: (B, 3, 112, 112) in [-1, 1] -> (B, embedding_size).

    Args:
        embedding_size: D (the paper uses 128; the library default is 512 like the IR-ResNets).
        dropout: dropout probability in the embedding layer (before its FC).
        output: embedding-layer option ``"A"``..``"E"`` (see :mod:`marginface.backbones.embedding`).
        pool: ``"gdc"`` (the paper's global depthwise conv, default) or ``"avg"`` (global average pooling;
            with output E this means the full FC over the flattened 7x7x512 map, ~12.8M more weights).
        checkpointing: recompute each bottleneck's activations during backward (training memory saver).
        fix_gamma: option E's final BatchNorm1d has a fixed scale of 1.
    """

    def __init__(
        self,
        embedding_size: int = 512,
        dropout: float = 0.0,
        output: str = "E",
        pool: str = "gdc",
        checkpointing: bool = False,
        fix_gamma: bool = True,
    ) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.checkpointing = checkpointing
        self.conv1 = ConvBNPReLU(3, 64, 3, stride=2)
        self.conv2_dw = ConvBNPReLU(64, 64, 3, groups=64)
        blocks, in_channels = [], 64
        for expansion, channels, repeats, stride in BOTTLENECKS:
            for i in range(repeats):
                blocks.append(Bottleneck(in_channels, channels, expansion, stride if i == 0 else 1))
                in_channels = channels
        self.blocks = nn.Sequential(*blocks)
        self.conv_sep = ConvBNPReLU(in_channels, 512, 1)
        self.head = EmbeddingHead(output, 512, 7, embedding_size, dropout, pool, fix_gamma)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 112, 112) faces in [-1, 1] -> (B, embedding_size) embeddings (not normalised)."""
        check_input(x)
        x = self.conv2_dw(self.conv1(x))
        for block in self.blocks:
            x = run_checkpointed(block, x) if self.checkpointing and self.training else block(x)
        return self.head(self.conv_sep(x))
