"""Face-embedding backbones behind one registry and one contract.

Every model maps aligned faces ``(B, 3, 112, 112)`` in [-1, 1] to embeddings ``(B, embedding_size)`` (not
L2-normalised; the heads and losses normalise) and exposes ``embedding_size``.  No precision or device logic
lives in the models: autocast, ``channels_last`` and ``torch.compile`` are the caller's choice.

>>> from marginface import backbones
>>> model = backbones.create("iresnet50", embedding_size=512, output="E")
"""

from __future__ import annotations

from functools import partial

from torch import nn

from marginface.registry import Registry

from .densenet import DenseNet, densenet
from .embedding import OUTPUT_OPTIONS, EmbeddingHead
from .iresnet import IResNet, iresnet
from .mobilefacenet import MobileFaceNet
from .mobilenet import MobileNet
from .tiny import Tiny28
from .vit import VARIANTS as VIT_VARIANTS
from .vit import VisionTransformer, vit
from .weights import load_insightface, load_weights, save_weights

BACKBONES: Registry[nn.Module] = Registry("backbone")
register = BACKBONES.register
for _depth in (18, 34, 50, 100, 200):
    register(f"iresnet{_depth}", partial(iresnet, _depth))
register("mobilefacenet", MobileFaceNet)
for _name in VIT_VARIANTS:
    register(_name, partial(vit, _name))
# the ArcFace paper's comparison CNNs (insightface's fmobilenet / fdensenet adaptations to 112x112)
register("mobilenet", MobileNet)
register("densenet121", partial(densenet, 121))
# a three-layer CNN at 28x28 for studies that must fit a CPU (docs/results.md); not a model to ship
register("tiny28", Tiny28)
del _depth, _name  # loop variables, not part of the module


def available() -> list[str]:
    """Names accepted by :func:`create`: the IR-ResNets by depth, MobileFaceNet, the face ViTs (T/S/B/L), and the
    ArcFace paper's comparison CNNs MobileNet (V1) and DenseNet-121, and tiny28 (CPU-budget studies)."""
    return BACKBONES.names()


def create(
    name: str, embedding_size: int = 512, dropout: float = 0.0, output: str = "E", **kwargs: object
) -> nn.Module:
    """Build a backbone by registry name.

    Args:
        name: one of :func:`available` (``iresnet18/34/50/100/200``, ``mobilefacenet``, ``vit_t/s/b/l``,
            ``mobilenet``, ``densenet121``, ``tiny28``).
        embedding_size: D, the output dimension.
        dropout: dropout probability before the embedding FC (0.4 in the ArcFace paper's option E).
        output: embedding-layer option ``"A"``..``"E"``; see :mod:`marginface.backbones.embedding`.
        **kwargs: model-specific switches: ``checkpointing`` and ``fix_gamma`` (all), ``se`` (IR-ResNet),
            ``pool`` (MobileFaceNet), ``drop_path``, ``mask_ratio``, ``heads``, ``mlp_ratio`` (ViTs),
            ``width_mult`` (MobileNet).

    Returns:
        An ``nn.Module`` with ``forward((B, 3, 112, 112)) -> (B, embedding_size)`` and ``embedding_size``.
    """
    return BACKBONES.create(name, embedding_size=embedding_size, dropout=dropout, output=output, **kwargs)


# DESIGN.md style rule 2 names the factory create_backbone; both names build the same models.
create_backbone = create

__all__ = [
    "BACKBONES",
    "OUTPUT_OPTIONS",
    "DenseNet",
    "EmbeddingHead",
    "IResNet",
    "MobileFaceNet",
    "MobileNet",
    "Tiny28",
    "VisionTransformer",
    "available",
    "create",
    "create_backbone",
    "load_insightface",
    "load_weights",
    "register",
    "save_weights",
]
