"""The embedding layer that turns a backbone's final feature map into the face embedding (output options A-E).

The ArcFace paper (Deng et al., section 3.2 / table 7) compares five ways to go from the last convolutional
map (B, C, 7, 7) to the embedding (B, D):

- ``"A"``: global pooling (GP) only; the embedding is the C pooled channels, so D must equal C.
- ``"B"``: GP, then one fully connected layer (FC).
- ``"C"``: GP, FC, BatchNorm1d.
- ``"D"``: GP, FC, BatchNorm1d, PReLU.
- ``"E"``: BatchNorm2d, Dropout, flatten, FC(C*7*7 -> D), BatchNorm1d -- the paper's choice and our default.

"Global pooling" is ``pool="avg"`` (global average pooling, used by IR-ResNet) or ``pool="gdc"``, the
global depthwise convolution of MobileFaceNet (a learned 7x7 per-channel weighting followed by BatchNorm2d,
i.e. a learned pooling).  With ``pool="gdc"`` option E keeps its BN-Dropout-...-FC-BN structure but its FC
over the flattened map is factorised into GDC (per-channel 7x7 weights) times FC(C -> D): this is exactly the
embedding layer of the MobileFaceNet paper and costs C*49 + C*D weights instead of C*49*D.
"""

from __future__ import annotations

import torch
from torch import nn

OUTPUT_OPTIONS = ("A", "B", "C", "D", "E")
POOLS = ("avg", "gdc")


class FixedGammaBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose scale is fixed at 1: only the shift ``bias`` is learned.

    This is the last layer of option E in the original ArcFace code (mxnet ``fix_gamma=True``; arcface_torch
    sets ``features.weight`` to 1.0 with ``requires_grad=False``).  We drop the weight altogether instead of
    freezing it, so every parameter of a model is trainable and no optimiser or weight-decay setting can
    silently move a "frozen" scale.  State-dict keys: ``bias``, ``running_mean``, ``running_var``,
    ``num_batches_tracked``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=False)
        # affine=False registered bias as None; a real Parameter here is passed to F.batch_norm by the
        # parent's forward, which accepts weight=None together with a bias.
        self.bias = nn.Parameter(torch.zeros(num_features))

    def reset_parameters(self) -> None:
        """Reset the running statistics and the shift (the parent skips the shift since affine=False)."""
        super().reset_parameters()
        if isinstance(getattr(self, "bias", None), nn.Parameter):
            nn.init.zeros_(self.bias)


class GlobalDepthwiseConv(nn.Sequential):
    """MobileFaceNet's GDC: depthwise conv with a kernel the size of the map (linear), then BatchNorm2d.

    (B, C, k, k) -> (B, C, 1, 1).  Unlike average pooling it learns how much each position of the 7x7 map
    counts, which the MobileFaceNet paper shows matters for faces (corner units see less of the face).
    """

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__(
            nn.Conv2d(channels, channels, kernel, groups=channels, bias=False),
            nn.BatchNorm2d(channels),
        )


def _pool(pool: str, channels: int, spatial: int) -> nn.Module:
    if pool == "avg":
        return nn.AdaptiveAvgPool2d(1)
    return GlobalDepthwiseConv(channels, spatial)


class EmbeddingHead(nn.Module):
    """Maps the final feature map (B, C, S, S) to the embedding (B, D) by one of the options A-E.

    Submodule names (present depending on the option): ``map_bn`` (BN2d over the map, E), ``dropout``,
    ``pool`` (GP for A-D; the GDC of a factorised E), ``fc``, ``bn`` (BN1d), ``prelu`` (D).

    Args:
        output: one of ``"A"``..``"E"`` (see the module docstring).
        channels: C, channels of the final map.
        spatial: S, side of the final (square) map; 7 for a 112x112 input.
        embedding_size: D.  Option A has no FC, so it requires ``embedding_size == channels``.
        dropout: drop probability before the FC (options B-E); option A refuses a non-zero value.
        pool: ``"avg"`` (global average pooling) or ``"gdc"`` (global depthwise conv), see module docstring.
        fix_gamma: option E only; the final BatchNorm1d has a fixed scale of 1 (the ArcFace default).
    """

    def __init__(
        self,
        output: str,
        channels: int,
        spatial: int,
        embedding_size: int,
        dropout: float = 0.0,
        pool: str = "avg",
        fix_gamma: bool = True,
    ) -> None:
        super().__init__()
        _check_head_args(output, channels, embedding_size, dropout, pool)
        self.output = output
        self.embedding_size = embedding_size
        if output == "E":
            self.map_bn = nn.BatchNorm2d(channels)
        if dropout > 0:
            self.dropout = nn.Dropout(p=dropout)
        if output != "E" or pool == "gdc":
            self.pool = _pool(pool, channels, spatial)
        if output != "A":
            flat = channels * spatial * spatial if output == "E" and pool == "avg" else channels
            self.fc = nn.Linear(flat, embedding_size)
        if output in ("C", "D"):
            self.bn = nn.BatchNorm1d(embedding_size)
        elif output == "E":
            self.bn = FixedGammaBatchNorm1d(embedding_size) if fix_gamma else nn.BatchNorm1d(embedding_size)
        if output == "D":
            self.prelu = nn.PReLU(embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) feature map -> (B, D) embedding."""
        # Every step is optional; the order is the paper's: BN2d, Dropout, pool, FC, BN1d, PReLU.  The
        # hasattr tests are resolved once when torch.compile traces, so they cost no graph break.
        if hasattr(self, "map_bn"):
            x = self.map_bn(x)
        if hasattr(self, "dropout") and self.output == "E":
            x = self.dropout(x)
        if hasattr(self, "pool"):
            x = self.pool(x)
        x = torch.flatten(x, 1)
        if hasattr(self, "dropout") and self.output != "E":
            x = self.dropout(x)
        if hasattr(self, "fc"):
            x = self.fc(x)
        if hasattr(self, "bn"):
            x = self.bn(x)
        if hasattr(self, "prelu"):
            x = self.prelu(x)
        return x


def _check_head_args(output: str, channels: int, embedding_size: int, dropout: float, pool: str) -> None:
    if output not in OUTPUT_OPTIONS:
        raise ValueError(f"output={output!r} is not an output option; choose one of {OUTPUT_OPTIONS}")
    if pool not in POOLS:
        raise ValueError(f"pool={pool!r} is not a pooling kind; choose one of {POOLS}")
    if embedding_size < 1:
        raise ValueError(f"embedding_size must be a positive integer, got {embedding_size}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout is a probability in [0, 1), got {dropout}")
    if output == "A" and embedding_size != channels:
        raise ValueError(
            f"output='A' (global pooling only) yields the {channels} pooled channels, so embedding_size must "
            f"be {channels} (got {embedding_size}); pick output 'B'-'E' for another size"
        )
    if output == "A" and dropout > 0:
        raise ValueError("output='A' has no FC to put dropout in front of; use dropout=0.0 or output 'B'-'E'")
