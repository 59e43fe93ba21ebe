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

``scale`` and ``blocks`` give the wider and deeper variants of insightface's arcface_torch (``mbf``: scale 2,
blocks (1, 4, 6, 2); ``mbf_large``: scale 4, blocks (2, 8, 12, 4)), so their weights load unchanged: the
widths 64 / 128 of the table become 64 x scale / 128 x scale while the bottlenecks' hidden widths stay those of
the table (128, 256, 512 - as there), and ``blocks`` counts the stride-1 bottlenecks after each stride-2 one
(``blocks[0]`` > 1 replaces the depthwise conv of row 2 by that many 64 x scale bottlenecks of hidden width
128).  Row 2's convolution has 64 groups, which is depthwise at scale 1 (the paper) and grouped above.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_input, run_checkpointed
from .embedding import EmbeddingHead
from .iresnet import _init_weights

# (expansion t, output channels c, repeats n, first stride s), rows 3-7 of table 1.
BOTTLENECKS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))
# The same rows as stages of insightface's layout: (width at scale 1, hidden width of the stride-2 bottleneck,
# hidden width of the stride-1 ones); ``blocks[i + 1]`` stride-1 bottlenecks follow stage i's stride-2 one.
STAGES = ((64, 128, 128), (128, 256, 256), (128, 512, 256))
PAPER_BLOCKS = (1, 4, 6, 2)


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

    def __init__(self, in_channels: int, out_channels: int, hidden: int, stride: int) -> None:
        super().__init__()
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
        scale: width multiplier of the trunk (1: the paper; 2 / 4: arcface_torch's mbf / mbf_large).
        blocks: stride-1 bottlenecks per stage, arcface_torch's ``blocks`` (see the module docstring).
    """

    def __init__(
        self,
        embedding_size: int = 512,
        dropout: float = 0.0,
        output: str = "E",
        pool: str = "gdc",
        checkpointing: bool = False,
        fix_gamma: bool = True,
        scale: int = 1,
        blocks: tuple[int, int, int, int] | list[int] = PAPER_BLOCKS,
    ) -> None:
        super().__init__()
        if scale < 1 or len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"MobileFaceNet needs scale >= 1 and four block counts >= 1, got {scale}, {blocks}")
        self.embedding_size = embedding_size
        self.checkpointing = checkpointing
        width = 64 * scale
        self.conv1 = ConvBNPReLU(3, width, 3, stride=2)
        if blocks[0] == 1:
            self.conv2_dw = ConvBNPReLU(width, width, 3, groups=64)
        else:
            self.conv2_dw = nn.Sequential(*(Bottleneck(width, width, 128, 1) for _ in range(blocks[0])))
        trunk, in_channels = [], width
        for (channels, hidden_down, hidden), repeats in zip(STAGES, blocks[1:]):
            trunk.append(Bottleneck(in_channels, channels * scale, hidden_down, 2))
            trunk += [Bottleneck(channels * scale, channels * scale, hidden, 1) for _ in range(repeats)]
            in_channels = channels * scale
        self.blocks = nn.Sequential(*trunk)
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
