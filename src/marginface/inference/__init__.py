"""Use a trained model: model cards, ``load_model``, ``FaceRecognizer``, ``Gallery``, calibration and export.

- :mod:`~marginface.inference.card`: the model card stored in safetensors / ONNX metadata.
- :mod:`~marginface.inference.model`: ``load_model`` for our safetensors, insightface ``.pth`` and ONNX files.
- :mod:`~marginface.data.images`: input conversion (EXIF, grey / RGBA / 16-bit / CMYK).
- :mod:`~marginface.inference.recognizer`: ``FaceRecognizer`` (embed, verify, identify).
- :mod:`~marginface.inference.calibrate`: thresholds at a target FAR, written into the card.
- :mod:`~marginface.inference.gallery`: ``Gallery`` (templates, faiss search, atomic folder format).
- :mod:`~marginface.inference.export`: ONNX fp32 / fp16 / INT8 export.
- :mod:`~marginface.inference.commands`: the ``verify/enroll/identify/export/calibrate/info`` commands.

Names are imported lazily (PEP 562), so ``marginface --help`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CARD_KEY": "card", "InputContract": "card", "ModelCard": "card", "tensors_sha256": "card",
    "LoadedModel": "model", "load_model": "model", "read_card": "model", "write_card": "model",
    "FaceRecognizer": "recognizer", "FaceInfo": "recognizer", "Verification": "recognizer",
    "Gallery": "gallery", "Match": "gallery",
    "Calibration": "calibrate", "calibrate_model": "calibrate", "calibrate_scores": "calibrate",
    "export_onnx": "export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"marginface.inference.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'marginface.inference' has no attribute {name!r}")
