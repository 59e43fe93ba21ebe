"""The margin-loss family behind one interface.

``create(name, embedding_size=..., num_classes=..., **params)`` builds any loss by its registry name and
``available()`` lists the names. Every loss is an ``nn.Module`` owning ``weight`` (num_classes, embedding_size)
(sub-center ArcFace: (num_classes, k, embedding_size)); ``loss(embeddings, labels)`` is the mean loss and
``loss.logits(embeddings, labels)`` the (B, C) float32 logits whose cross-entropy is that loss.
"""

from __future__ import annotations

from collections.abc import Callable

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
from marginface.losses.softmax import SoftmaxLoss
from marginface.losses.sphereface import SphereFaceLoss
from marginface.losses.sphereface2 import SphereFace2Loss
from marginface.losses.subcenter import SubCenterArcFaceLoss

_REGISTRY: dict[str, Callable[..., MarginLoss]] = {}


def register(name: str, factory: Callable[..., MarginLoss]) -> None:
    """Add a loss under ``name``; ``factory(embedding_size=..., num_classes=..., **params)`` builds it."""
    if name in _REGISTRY:
        raise ValueError(f"a loss named {name!r} is already registered")
    _REGISTRY[name] = factory


def available() -> list[str]:
    """The registered loss names, sorted."""
    return sorted(_REGISTRY)


def parameters(name: str) -> dict[str, object]:
    """The parameters of loss ``name`` (beyond ``embedding_size`` / ``num_classes``) and their defaults, in
    signature order; ``inspect.Parameter.empty`` marks one without a default.

    Raises:
        ValueError: unknown loss name (the message lists the available ones).
    """
    import inspect

    if name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(available())}")
    signature = inspect.signature(_REGISTRY[name])
    return {p.name: p.default for p in signature.parameters.values()
            if p.name not in ("self", "embedding_size", "num_classes")
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def accepts_any_parameter(name: str) -> bool:
    """True when loss ``name``'s factory takes ``**kwargs`` (its parameter names cannot be checked up front)."""
    import inspect

    return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(_REGISTRY[name]).parameters.values())


def create(name: str, *, embedding_size: int, num_classes: int, **params) -> MarginLoss:
    """Build the loss registered as ``name`` with its parameters (full names, units as documented per loss)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(available())}")
    try:
        return _REGISTRY[name](embedding_size=embedding_size, num_classes=num_classes, **params)
    except TypeError as err:  # an unknown keyword: name the loss and its parameters
        raise ValueError(f"bad parameters for loss {name!r}: {err}") from err


for _name, _factory in {
    "softmax": SoftmaxLoss,
    "normface": NormFaceLoss,
    "sphereface": SphereFaceLoss,
    "am_softmax": AMSoftmaxLoss,
    "cosface": CosFaceLoss,
    "arcface": ArcFaceLoss,
    "combined": CombinedMarginLoss,
    "mv_softmax": MVSoftmaxLoss,
    "curricularface": CurricularFaceLoss,
    "circle": CircleLoss,
    "subcenter_arcface": SubCenterArcFaceLoss,
    "adaface": AdaFaceLoss,
    "magface": MagFaceLoss,
    "elasticface_arc": ElasticArcFaceLoss,
    "elasticface_cos": ElasticCosFaceLoss,
    "sphereface2": SphereFace2Loss,
    "adacos": AdaCosLoss,
    "amlfs": AMLFSLoss,
}.items():
    register(_name, _factory)

__all__ = ["MarginContext", "MarginLoss", "available", "create", "parameters", "register"]
