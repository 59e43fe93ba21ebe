"""Backbone weights: our checkpoints as safetensors, and insightface arcface_torch IResNet ``.pth`` files.

Nothing here unpickles arbitrary objects: safetensors stores raw tensors, and insightface files go through
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .embedding import FixedGammaBatchNorm1d

# insightface arcface_torch IResNet name prefix -> ours.  The trunk (conv1, bn1, prelu, layer1..4 with bn1,
# conv1, bn2, prelu, conv2, bn3, downsample.0/1) has identical names; only the embedding layer (option E)
# lives under ``head`` here.  ``dropout`` has no parameters.
INSIGHTFACE_HEAD_PREFIXES = {"bn2.": "head.map_bn.", "fc.": "head.fc.", "features.": "head.bn."}
_LIST_LIMIT = 20


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """Write ``model.state_dict()`` (parameters and BatchNorm buffers) to a safetensors file, atomically and with
    the mode the umask asks for (:func:`marginface.files.atomic_write`).

    Tensors are copied to contiguous CPU memory first, because safetensors stores dense row-major data and a
    ``channels_last`` model's convolution weights are not contiguous.
    """
    from safetensors.torch import save_file

    from marginface.files import atomic_write

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=dict(metadata or {})))


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a safetensors file written by :func:`save_weights` into ``model`` (strict); returns ``model``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file's keys or shapes do not match the model (all differences are listed).
    """
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"backbone weights file {str(path)!r} does not exist")
    load_strict(model, load_file(str(path), device="cpu"), source=str(path))
    return model


def load_insightface(model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor]) -> nn.Module:
    """Load an insightface arcface_torch IResNet state dict (a ``.pth`` path or the dict) into ``model``.

    ``model`` must be one of our IR-ResNets of the same depth with ``output="E"`` (insightface's embedding
    layer).  A DDP ``module.`` prefix and the ``state_dict_backbone`` entry of insightface's training
    checkpoints are unwrapped.  Files are read with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the model is not an option-E IR-ResNet, or the keys/shapes do not match (listed).
    """
    from .iresnet import IResNet

    if not isinstance(model, IResNet) or model.head.output != "E":
        raise ValueError("insightface IResNet weights load into an IR-ResNet built with output='E' only")
    state = read_insightface(source)
    fix_gamma = isinstance(model.head.bn, FixedGammaBatchNorm1d)
    load_strict(model, insightface_to_marginface(state, fix_gamma=fix_gamma), source=_describe(source))
    return model


def insightface_to_marginface(state: Mapping[str, torch.Tensor], fix_gamma: bool = True) -> dict[str, torch.Tensor]:
    """Rename an insightface IResNet state dict to our parameter names.

    With ``fix_gamma`` (our default, and insightface's: ``features.weight`` is frozen at 1.0 there) the
    ``features.weight`` entry is checked to be all ones and dropped, since our final BN has no scale.

    Raises:
        ValueError: ``fix_gamma`` is set but ``features.weight`` is not all ones.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}
    gamma = state.get("features.weight")
    if fix_gamma and gamma is not None:
        if not torch.all(gamma == 1):
            raise ValueError(
                "this insightface checkpoint has a trained features.weight (not all 1.0); build the model with "
                "fix_gamma=False so the final BatchNorm1d keeps a learnable scale"
            )
        del state["features.weight"]
    return {_rename(key): value for key, value in state.items()}


def _rename(key: str) -> str:
    for theirs, ours in INSIGHTFACE_HEAD_PREFIXES.items():
        if key.startswith(theirs):
            return ours + key.removeprefix(theirs)
    return key


def read_insightface(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """The tensors of an insightface ``.pth`` (``torch.load(weights_only=True)``) or of a given state dict, with
    the ``state_dict_backbone`` entry of insightface's training checkpoints unwrapped (names unchanged).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not a mapping of names to tensors.
    """
    if isinstance(source, Mapping):
        state = source
    else:
        if not Path(source).is_file():
            raise FileNotFoundError(f"insightface weights file {str(source)!r} does not exist")
        state = torch.load(source, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict_backbone" in state:
        state = state["state_dict_backbone"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{_describe(source)} is not a state dict of tensors (name -> tensor)")
    return state


def _describe(source: object) -> str:
    return "the given state dict" if isinstance(source, Mapping) else repr(str(source))


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state)`` after checking keys and shapes, with every difference listed.

    A missing ``num_batches_tracked`` (checkpoints from before torch 0.4.1) is filled from the model.

    Raises:
        ValueError: keys or shapes differ; the message names ``source`` and lists them (20 of each at most).
    """
    expected = model.state_dict()
    state = dict(state)
    for key in set(expected) - set(state):
        # Checkpoints from before torch 0.4.1 lack BatchNorm's counter; it only matters for momentum=None.
        if key.endswith("num_batches_tracked"):
            state[key] = expected[key]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = [
        _listing("missing keys (in the model, not in the weights)", missing),
        _listing("unexpected keys (in the weights, not in the model)", unexpected),
        _listing("shape mismatches", mismatched),
    ]
    problems = [p for p in problems if p]
    if problems:
        raise ValueError(
            f"weights from {source} do not fit {type(model).__name__}; check the backbone name, depth, output "
            "option and embedding_size it was trained with.\n" + "\n".join(problems)
        )
    model.load_state_dict(state, strict=True)


def _listing(title: str, items: list[str]) -> str:
    if not items:
        return ""
    shown = ", ".join(items[:_LIST_LIMIT])
    more = f", ... ({len(items) - _LIST_LIMIT} more)" if len(items) > _LIST_LIMIT else ""
    return f"  {len(items)} {title}: {shown}{more}"
