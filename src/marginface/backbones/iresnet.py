"""IR-ResNet (LResNet-E-IR of the ArcFace paper): iresnet18 / 34 / 50 / 100 / 200.

Structure (ArcFace paper section 3.2; parameter names follow insightface's arcface_torch ``iresnet.py`` so
its state dicts load through :func:`marginface.backbones.weights.load_insightface`):

- stem ``conv1`` 3x3 stride 1 (3 -> 64), ``bn1``, ``prelu``: stride 1 so a 112x112 face keeps a 7x7 map;
- ``layer1..layer4`` with 64 / 128 / 256 / 512 channels, each starting with a stride-2 block
  (112 -> 56 -> 28 -> 14 -> 7);
- improved residual unit: BN - Conv3x3 - BN - PReLU - Conv3x3(stride) - BN (+ optional SE), plus a shortcut
  that is the identity, or ``downsample`` = Conv1x1(stride) + BN when the shape changes;
- ``head``: the embedding layer, output option A-E (:mod:`marginface.backbones.embedding`).
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_input, run_checkpointed
from .embedding import EmbeddingHead

STAGE_DEPTHS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    200: (6, 26, 60, 6),
}
STAGE_WIDTHS = (64, 128, 256, 512)


class SqueezeExcitation(nn.Module):
    """SE block (Hu et al. 2018) as in insightface's SE-IR units: GAP, 1x1 (C -> C/r), PReLU, 1x1, sigmoid.

    (B, C, H, W) -> (B, C, H, W), each channel rescaled by a gate in (0, 1) computed from the whole map.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.prelu = nn.PReLU(hidden)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(self.prelu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class IRBlock(nn.Module):
    """Improved residual unit: BN-Conv3x3-BN-PReLU-Conv3x3(stride)-BN (+SE), plus the shortcut.

    (B, C_in, H, W) -> (B, C_out, H / stride, W / stride).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, se: bool = False) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.prelu = nn.PReLU(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.se = SqueezeExcitation(out_channels) if se else None
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        if self.se is not None:
            out = self.se(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """IR-ResNet backbone: (B, 3, 112, 112) in [-1, 1] -> (B, embedding_size).

    Args:
        depths: blocks per stage, e.g. (3, 4, 14, 3) for iresnet50.
        embedding_size: D, the embedding dimension.
        dropout: dropout probability in the embedding layer (before its FC).
        output: embedding-layer option ``"A"``..``"E"`` (see :mod:`marginface.backbones.embedding`).
        se: add a squeeze-and-excitation gate to every residual unit.
        checkpointing: recompute each residual unit's activations during backward instead of storing them
            (training only; about one stored activation per unit, one extra forward of compute).
        fix_gamma: option E's final BatchNorm1d has a fixed scale of 1 (ArcFace / insightface default).
    """

    def __init__(
        self,
        depths: tuple[int, int, int, int],
        embedding_size: int = 512,
        dropout: float = 0.0,
        output: str = "E",
        se: bool = False,
        checkpointing: bool = False,
        fix_gamma: bool = True,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or min(depths) < 1:
            raise ValueError(f"depths must be four positive block counts, one per stage, got {depths}")
        self.embedding_size = embedding_size
        self.checkpointing = checkpointing
        self.conv1 = nn.Conv2d(3, STAGE_WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        self.prelu = nn.PReLU(STAGE_WIDTHS[0])
        in_channels = STAGE_WIDTHS[0]
        for index, (depth, width) in enumerate(zip(depths, STAGE_WIDTHS), start=1):
            blocks = [IRBlock(in_channels if i == 0 else width, width, 2 if i == 0 else 1, se) for i in range(depth)]
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
            in_channels = width
        self.head = EmbeddingHead(output, in_channels, 7, embedding_size, dropout, "avg", fix_gamma)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 112, 112) faces in [-1, 1] -> (B, embedding_size) embeddings (not normalised)."""
        check_input(x)
        x = self.prelu(self.bn1(self.conv1(x)))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = run_checkpointed(block, x) if self.checkpointing and self.training else block(x)
        return self.head(x)


def _init_weights(model: nn.Module) -> None:
    """He-normal convolutions (fan_out), BN scale 1 / shift 0; PReLU and Linear keep torch's defaults."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def iresnet(depth: int, **kwargs: object) -> IResNet:
    """IR-ResNet of the given depth (18, 34, 50, 100 or 200); ``kwargs`` go to :class:`IResNet`."""
    if depth not in STAGE_DEPTHS:
        raise ValueError(f"no IR-ResNet of depth {depth}; available depths: {sorted(STAGE_DEPTHS)}")
    return IResNet(STAGE_DEPTHS[depth], **kwargs)  # type: ignore[arg-type]
