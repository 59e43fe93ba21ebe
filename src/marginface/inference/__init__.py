"""Use a trained model: model cards, ``load_model``, ``FaceRecognizer``, ``Gallery``, calibration and export.

- :mod:`marginface.models`: the model card and ``load_model`` for every format (re-exported here; the old
  modules ``inference.card``, ``inference.model`` and ``inference.mxnet_format`` stay one release).
- :mod:`~marginface.data.images`: input conversion (EXIF, grey / RGBA / 16-bit / CMYK).
- :mod:`~marginface.inference.recognizer`: ``FaceRecognizer`` (embed, verify, identify).
- :mod:`~marginface.inference.calibrate`: thresholds at a target FAR, written into the card.
- :mod:`~marginface.inference.gallery`: ``Gallery`` (templates, faiss search, atomic folder format).
- :mod:`~marginface.inference.export`: ONNX fp32 / fp16 / INT8 export.

The ``verify/enroll/identify/export/calibrate/info/convert`` commands are in ``marginface/cli/inference.py``.

Names are imported lazily (PEP 562), so ``marginface --help`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: name -> module (relative to marginface.inference, or absolute)
_EXPORTS = {
    "CARD_KEY": "marginface.models.card", "InputContract": "marginface.models.card",
    "ModelCard": "marginface.models.card", "tensors_sha256": "marginface.models.card",
    "LoadedModel": "marginface.models.loaded", "load_model": "marginface.models.load",
    "read_card": "marginface.models.load", "write_card": "marginface.models.load",
    "FaceRecognizer": "recognizer", "FaceInfo": "recognizer", "Verification": "recognizer",
    "Gallery": "gallery", "Match": "gallery",
    "Calibration": "calibrate", "calibrate_model": "calibrate", "calibrate_scores": "calibrate",
    "export_onnx": "export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = _EXPORTS[name]
        return getattr(importlib.import_module(module if "." in module else f"marginface.inference.{module}"), name)
    raise AttributeError(f"module 'marginface.inference' has no attribute {name!r}")
