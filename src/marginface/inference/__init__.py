"""Use a trained model: the model card and ``load_model`` (see docs in each module).

Done so far: :mod:`~marginface.inference.card` (the card in safetensors/ONNX metadata),
:mod:`~marginface.inference.model` (``load_model`` for our safetensors, insightface ``.pth`` and ONNX files),
:mod:`~marginface.inference.images` (input conversion). FaceRecognizer, Gallery, calibration and export are
not built yet (issue 13, unfinished).
"""

from marginface.inference.card import CARD_KEY, InputContract, ModelCard, tensors_sha256
from marginface.inference.model import LoadedModel, load_model, read_card, write_card

__all__ = ["CARD_KEY", "InputContract", "LoadedModel", "ModelCard", "load_model", "read_card", "tensors_sha256",
           "write_card"]
