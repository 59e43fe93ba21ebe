"""PyTorch ``.pth`` state dicts of foreign face models, on our backbones.

Read with ``torch.load(weights_only=True)`` (:func:`marginface.backbones.weights.read_insightface`): insightface
arcface_torch IResNets, MobileFaceNets (``mbf``, ``mbf_large``) and ViTs, and the CASIA MobileFaceNet layout,
renamed onto our backbones by :mod:`marginface.backbones.foreign` (sizes read from the tensor names and shapes);
contract RGB, ``(x - 127.5) / 127.5``. Any other layout is refused naming its top-level modules.
"""

from __future__ import annotations

from pathlib import Path

import torch

from marginface.models.card import ModelCard, tensors_sha256
from marginface.models.loaded import SUPPORTED, LoadedModel


def load_pth(path: Path, device: str) -> LoadedModel:
    """A ``.pth`` state dict of a layout :mod:`marginface.backbones.foreign` recognises, on our backbone."""
    from marginface.backbones import foreign
    from marginface.backbones.weights import read_insightface

    try:
        state = read_insightface(path)
    except Exception as err:  # torch.load raises UnpicklingError / RuntimeError for foreign files
        raise ValueError(f"{path} is not a PyTorch state dict of tensors ({err}); supported: {SUPPORTED}") from err
    state = foreign.strip_prefix(state)
    architecture = foreign.identify(state)
    if architecture is None:
        raise ValueError(f"{path}: {foreign.describe_unknown(state)}")
    if architecture == "iresnet":
        return _load_iresnet_pth(state, path, device)
    try:
        if architecture == "arcface_torch_vit":
            name, kwargs, size, ours = foreign.arcface_torch_vit(state)
        else:
            name = "mobilefacenet"
            convert = foreign.arcface_torch_mbf if architecture == "arcface_torch_mbf" else foreign.casia_mobilefacenet
            kwargs, size, ours = convert(state)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    card = ModelCard(backbone=name, embedding_size=size, backbone_kwargs=kwargs, source=f"{architecture}-pth",
                     training_data={"kind": f"{architecture} (unknown)"})
    return LoadedModel(card, str(path), _build_foreign(card, ours, path, architecture, device), "torch", device)


def _build_foreign(card: ModelCard, state: dict[str, torch.Tensor], path: Path, architecture: str,
                   device: str) -> torch.nn.Module:
    """Our ``card.backbone`` holding ``state`` (renamed already), strict; the card gets the weights hash."""
    from marginface import backbones
    from marginface.backbones.weights import load_strict

    model = backbones.create(card.backbone, embedding_size=card.embedding_size, **card.backbone_kwargs)
    try:
        load_strict(model, state, source=f"{path} ({architecture} layout, renamed onto {card.backbone})")
    except ValueError as err:
        missing = sorted(set(model.state_dict()) - set(state))
        first = f"; first missing key of ours: {missing[0]}" if missing else ""
        raise ValueError(f"{err}{first}") from err
    card.weights_sha256 = tensors_sha256(model.state_dict())
    return model.to(device).eval()


def _load_iresnet_pth(state: dict[str, torch.Tensor], path: Path, device: str) -> LoadedModel:
    """An arcface_torch IResNet state dict on our ``iresnet<depth>`` with option E (``fix_gamma`` as trained)."""
    from marginface import backbones
    from marginface.backbones.weights import insightface_to_marginface, load_strict

    depth, embedding_size = _iresnet_shape(state, path)
    gamma = state.get("features.weight")
    fix_gamma = gamma is None or bool(torch.all(gamma == 1))
    kwargs = {"output": "E", "fix_gamma": fix_gamma}
    card = ModelCard(backbone=f"iresnet{depth}", embedding_size=embedding_size, backbone_kwargs=kwargs,
                     source="insightface-pth", training_data={"kind": "insightface (unknown)"})
    ours = insightface_to_marginface(state, fix_gamma=fix_gamma)
    model = backbones.create(card.backbone, embedding_size=embedding_size, **kwargs)
    load_strict(model, ours, source=str(path))
    card.weights_sha256 = tensors_sha256(ours)
    return LoadedModel(card, str(path), model.to(device).eval(), "torch", device)


def _iresnet_shape(state: dict[str, torch.Tensor], path: Path) -> tuple[int, int]:
    """(depth, embedding size) of an insightface IResNet state dict, from its block names and fc shape."""
    from marginface.backbones.iresnet import STAGE_DEPTHS

    blocks = []
    for stage in range(1, 5):
        ids = {int(k.split(".")[1]) for k in state if k.startswith(f"layer{stage}.")}
        blocks.append(max(ids) + 1 if ids else 0)
    depth = next((d for d, counts in STAGE_DEPTHS.items() if tuple(counts) == tuple(blocks)), None)
    if depth is None or "fc.weight" not in state:
        raise ValueError(f"{path}: blocks per stage {blocks} (and fc.weight "
                         f"{'present' if 'fc.weight' in state else 'absent'}) match no IResNet depth "
                         f"{sorted(STAGE_DEPTHS)}; only insightface arcface_torch IResNets load from .pth")
    return depth, int(state["fc.weight"].shape[0])
