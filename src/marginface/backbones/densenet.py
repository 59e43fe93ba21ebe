"""DenseNet-BC (Huang et al., "Densely Connected Convolutional Networks", CVPR 2017, table 1) adapted to 112x112
faces as the ArcFace paper compared it.

The ArcFace paper's DenseNet is insightface's ``fdensenet`` symbol (its public mxnet/gluon code, read and written
anew here): the ImageNet DenseNet-BC with a **3x3 stride-1** first convolution instead of 7x7 stride 2, so that
after the 3x3 stride-2 max-pool a 112x112 face has the 56x56 map a 224x224 image has in the original, and then
the same dense blocks and transitions (56 -> 28 -> 14 -> 7). Inside the blocks and transitions BN is followed by
PReLU (insightface's ``net_act``; per channel here, as in the library's other backbones); the stem and the final
normalisation keep ReLU, as there.

* dense layer: BN - PReLU - conv1x1 (4k) - BN - PReLU - conv3x3 (k), its output concatenated to its input;
* transition: BN - PReLU - conv1x1 (halves the channels) - 2x2 average pool, stride 2;
* after the last block: BN - ReLU, then the embedding layer (option E by default: BN2d - Dropout -
  FC(7·7·C -> D) - BN1d).

``densenet121``: growth k = 32, 64 stem channels, blocks of 6, 12, 24, 16 layers, 1024 channels at 7x7.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_input, run_checkpointed
from .embedding import EmbeddingHead
from .iresnet import _init_weights

# depth: (stem channels, growth rate k, layers per dense block), table 1 of the paper.
SPECS = {121: (64, 32, (6, 12, 24, 16)), 169: (64, 32, (6, 12, 32, 32)), 201: (64, 32, (6, 12, 48, 32))}
BOTTLENECK_WIDTH = 4  # the 1x1 conv of a dense layer outputs 4k channels (DenseNet-B)


class DenseLayer(nn.Sequential):
    """BN - PReLU - conv1x1 (4k) - BN - PReLU - conv3x3 (k): (B, C, H, W) -> (B, k, H, W) new features."""

    def __init__(self, in_channels: int, growth: int) -> None:
        hidden = BOTTLENECK_WIDTH * growth
        super().__init__(
            nn.BatchNorm2d(in_channels), nn.PReLU(in_channels), nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden), nn.PReLU(hidden), nn.Conv2d(hidden, growth, 3, padding=1, bias=False),
        )


class DenseBlock(nn.Module):
    """``layers`` dense layers, each fed the concatenation of the block input and every earlier layer's output.

    (B, C, H, W) -> (B, C + layers * k, H, W).
    """

    def __init__(self, in_channels: int, growth: int, layers: int, checkpointing: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(in_channels + i * growth, growth) for i in range(layers))
        self.checkpointing = checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x
        for layer in self.layers:
            new = run_checkpointed(layer, features) if self.checkpointing and self.training else layer(features)
            features = torch.cat((features, new), dim=1)
        return features


class Transition(nn.Sequential):
    """BN - PReLU - conv1x1 (C -> C / 2) - avgpool 2x2 stride 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.BatchNorm2d(in_channels), nn.PReLU(in_channels),
                         nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.AvgPool2d(2, 2))


class DenseNet(nn.Module):
    """DenseNet-BC for faces: (B, 3, 112, 112) in [-1, 1] -> (B, embedding_size).

    Args:
        depth: 121, 169 or 201 (table 1 of the paper).
        embedding_size, dropout, output, fix_gamma: the embedding layer (:mod:`marginface.backbones.embedding`).
        checkpointing: recompute each dense layer's activations during backward (DenseNets are memory-hungry:
            every layer's concatenated input is otherwise kept).
    """

    def __init__(self, depth: int = 121, embedding_size: int = 512, dropout: float = 0.0, output: str = "E",
                 checkpointing: bool = False, fix_gamma: bool = True) -> None:
        super().__init__()
        if depth not in SPECS:
            raise ValueError(f"no DenseNet of depth {depth}; available depths: {sorted(SPECS)}")
        stem, growth, block_layers = SPECS[depth]
        self.embedding_size = embedding_size
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        stages, channels = [], stem
        for i, layers in enumerate(block_layers):
            stages.append(DenseBlock(channels, growth, layers, checkpointing))
            channels += layers * growth
            if i < len(block_layers) - 1:
                stages.append(Transition(channels, channels // 2))
                channels //= 2
        self.features = nn.Sequential(*stages, nn.BatchNorm2d(channels), nn.ReLU())
        self.head = EmbeddingHead(output, channels, 7, embedding_size, dropout, "avg", fix_gamma)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 112, 112) faces in [-1, 1] -> (B, embedding_size) embeddings (not normalised)."""
        check_input(x)
        return self.head(self.features(self.stem(x)))


def densenet(depth: int, **kwargs: object) -> DenseNet:
    """DenseNet-BC of the given depth (121, 169 or 201); ``kwargs`` go to :class:`DenseNet`."""
    return DenseNet(depth, **kwargs)  # type: ignore[arg-type]
