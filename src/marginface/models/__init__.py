"""The model file: its card and the loading / converting of every format, in one place.

- :mod:`~marginface.models.card`: the model card stored in safetensors / ONNX metadata (the input contract, how
  the model was trained, its weights hash and thresholds).
- :mod:`~marginface.models.load`: ``load_model`` (the one path that reads a model file), ``read_card``,
  ``write_card`` and ``convert_model``; our safetensors and MXNet zoo files are read there.
- :mod:`~marginface.models.pth_format`, :mod:`~marginface.models.onnx_format`,
  :mod:`~marginface.models.mxnet_format`: the foreign formats.
- :mod:`~marginface.models.loaded`: ``LoadedModel``, what ``load_model`` returns.
- :mod:`~marginface.models.backbone`: ``load_backbone`` and ``EvalInputAdapter``, a model file as a backbone
  under the evaluation contract.

This package imports only backbones, data and the foundation (errors, registry, paths), never training,
evaluation or inference, which all load their models through it. Names are imported lazily (PEP 562), so
``import marginface.models`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CARD_KEY": "card", "InputContract": "card", "ModelCard": "card", "tensors_sha256": "card",
    "training_card": "card",
    "LoadedModel": "loaded",
    "load_model": "load", "read_card": "load", "write_card": "load", "convert_model": "load", "read_tensors": "load",
    "EvalInputAdapter": "backbone", "load_backbone": "backbone",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"marginface.models.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'marginface.models' has no attribute {name!r}")
