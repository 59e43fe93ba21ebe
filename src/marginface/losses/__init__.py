"""The margin-loss family behind one interface.

``create(name, embedding_size=..., num_classes=..., **params)`` builds any loss by its registry name and
``available()`` lists the names. Every loss is an ``nn.Module`` owning ``weight`` (num_classes, embedding_size)
(sub-center ArcFace: (num_classes, k, embedding_size)); ``loss(embeddings, labels)`` is the mean loss and
``loss.logits(embeddings, labels)`` the (B, C) float32 logits whose cross-entropy is that loss.

Each loss registers itself where it is defined (``@register("arcface")`` on its class, see
:mod:`marginface.losses.registry`); the imports below load every loss module and so fill the registry.
"""

from __future__ import annotations

from marginface.losses.adacos import AdaCosLoss
from marginface.losses.adaface import AdaFaceLoss
from marginface.losses.amlfs import AMLFSLoss
from marginface.losses.arcface import ArcFaceLoss
from marginface.losses.base import MarginContext, MarginLoss
from marginface.losses.circle import CircleLoss
from marginface.losses.combined import CombinedMarginLoss
from marginface.losses.cosface import AMSoftmaxLoss, CosFaceLoss
from marginface.losses.curricularface import CurricularFaceLoss
from marginface.losses.elasticface import ElasticArcFaceLoss, ElasticCosFaceLoss
from marginface.losses.magface import MagFaceLoss
from marginface.losses.mv_softmax import MVSoftmaxLoss
from marginface.losses.normface import NormFaceLoss
from marginface.losses.registry import LOSSES, register
from marginface.losses.softmax import SoftmaxLoss
from marginface.losses.sphereface import SphereFaceLoss
from marginface.losses.sphereface2 import SphereFace2Loss
from marginface.losses.subcenter import SubCenterArcFaceLoss


def available() -> list[str]:
    """The registered loss names, sorted."""
    return LOSSES.names()


def parameters(name: str) -> dict[str, object]:
    """The parameters of loss ``name`` (beyond ``embedding_size`` / ``num_classes``) and their defaults, in
    signature order; ``inspect.Parameter.empty`` marks one without a default.

    Raises:
        ValueError: unknown loss name (the message lists the available ones).
    """
    import inspect

    signature = inspect.signature(LOSSES.factory(name))
    return {p.name: p.default for p in signature.parameters.values()
            if p.name not in ("self", "embedding_size", "num_classes")
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def accepts_any_parameter(name: str) -> bool:
    """True when loss ``name``'s factory takes ``**kwargs`` (its parameter names cannot be checked up front)."""
    import inspect

    return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(LOSSES.factory(name)).parameters.values())


def create(name: str, *, embedding_size: int, num_classes: int, **params) -> MarginLoss:
    """Build the loss registered as ``name`` with its parameters (full names, units as documented per loss)."""
    factory = LOSSES.factory(name)
    try:
        return factory(embedding_size=embedding_size, num_classes=num_classes, **params)
    except TypeError as err:  # an unknown keyword: name the loss and its parameters
        raise ValueError(f"bad parameters for loss {name!r}: {err}") from err


__all__ = [
    "LOSSES", "AMLFSLoss", "AMSoftmaxLoss", "AdaCosLoss", "AdaFaceLoss", "ArcFaceLoss", "CircleLoss",
    "CombinedMarginLoss", "CosFaceLoss", "CurricularFaceLoss", "ElasticArcFaceLoss", "ElasticCosFaceLoss",
    "MVSoftmaxLoss", "MagFaceLoss", "MarginContext", "MarginLoss", "NormFaceLoss", "SoftmaxLoss", "SphereFace2Loss",
    "SphereFaceLoss", "SubCenterArcFaceLoss", "available", "create", "parameters", "register",
]
