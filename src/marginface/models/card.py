"""The model card: the contract a face model needs to be used correctly, stored inside the model file.

A card is JSON under the key ``marginface.card`` of a safetensors header's metadata (and of an ONNX model's
``metadata_props``). It says how to build the backbone (registry name and kwargs), what the input must be
(size, channel order, per-channel mean/std of the pixel normalisation ``(x - mean) / std`` on 0..255 pixels,
the alignment template, flip-TTA default), how the model was trained (loss and parameters, data kind,
identities, images), its validation results, a SHA-256 of its weights and, once calibrated, its thresholds.

The weights hash is what a :class:`~marginface.inference.gallery.Gallery` compares: embeddings from two
models are only comparable when they come from the same weights run at the same precision.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

#: metadata key under which the card's JSON is stored (safetensors header / ONNX metadata_props).
CARD_KEY = "marginface.card"
CARD_VERSION = 1
#: sane ranges of the contract's sizes, checked when a card is built or read, before anything is allocated.
INPUT_SIZE_RANGE = (8, 1024)  # pixels per side of the aligned crop
EMBEDDING_SIZE_RANGE = (1, 65536)  # D
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class InputContract:
    """What the network's input tensor must be. Pixels are 0..255 floats before ``(x - mean) / std``.

    Attributes:
        size: side of the square aligned crop, pixels.
        channel_order: ``"RGB"`` or ``"BGR"``: the order of the three input planes.
        mean, std: per-plane normalisation (in ``channel_order``), 0..255 units.
        template: the alignment the weights were trained on (``"arcface_112"``: insightface's five points).
        flip_tta: whether embeddings sum the raw outputs of the crop and its mirror by default.
    """

    size: int = 112
    channel_order: str = "RGB"
    mean: list[float] = field(default_factory=lambda: [127.5, 127.5, 127.5])
    std: list[float] = field(default_factory=lambda: [127.5, 127.5, 127.5])
    template: str = "arcface_112"
    flip_tta: bool = True

    def __post_init__(self) -> None:
        _check_int("input.size", self.size, INPUT_SIZE_RANGE)
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"card input.channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"card input.mean/std must be three values (std > 0), got {self.mean} / {self.std}")
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in [*self.mean, *self.std]):
            raise ValueError(f"card input.mean/std must be finite numbers, got {self.mean} / {self.std}")


@dataclass
class ModelCard:
    """Everything needed to load and use a face model; see the module docstring.

    Attributes:
        backbone: registry name (:func:`marginface.backbones.create`), or ``"onnx"`` for a bare ONNX graph.
        backbone_kwargs: kwargs for ``create`` besides ``embedding_size`` (``output``, ``dropout``, ...).
        embedding_size: D.
        input: the :class:`InputContract`.
        weights_sha256: hash of the weights (:func:`tensors_sha256`); checked on load.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"`` (exports); part of the compatibility key.
        loss: ``{"name": ..., "params": {...}}`` when known.
        training_data: ``{"kind", "identities", "images", "path"}`` when known.
        validation: validation results (e.g. ``{"step": 300, "lfw": 0.95}``).
        thresholds: calibrated thresholds (see :mod:`marginface.inference.calibrate`), empty until calibrated.
        source: where the card came from (``"marginface-train"``, ``"insightface-pth"``, ``"user"``...).
    """

    backbone: str
    embedding_size: int
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    input: InputContract = field(default_factory=InputContract)
    weights_sha256: str = ""
    precision: str = "fp32"
    loss: dict[str, Any] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    source: str = "user"
    version: int = CARD_VERSION

    def __post_init__(self) -> None:
        """Contract fields in range (before any model or buffer of these sizes is built) and usable thresholds."""
        _check_int("embedding_size", self.embedding_size, EMBEDDING_SIZE_RANGE)
        if self.precision not in PRECISIONS:
            raise ValueError(f"card precision must be one of {PRECISIONS}, got {self.precision!r}")
        for key in ("default", "best_threshold"):
            value = self.thresholds.get(key)
            if value is None or value in (math.inf, -math.inf):  # +-inf: reject / accept every pair (calibration
                continue  # found no cut inside the scores), a real operating point
            # float32 cosines of unit vectors overshoot +-1 by ~1e-7, and a cut between scores can sit there
            bad = isinstance(value, bool) or not isinstance(value, int | float) or not abs(value) <= 1 + 1e-4
            if bad:
                raise ValueError(f"card thresholds.{key} must be a cosine in [-1, 1] (or +-inf), got {value!r}: "
                                 "calibrate the model again (marginface calibrate MODEL ...)")

    @property
    def compatibility_key(self) -> str:
        """Weights hash + precision (+ ``:BGR`` for a BGR input contract): fp32 torch and its fp32 ONNX export share
        it; fp16/INT8 exports, and the same weights fed the other channel order, do not."""
        order = "" if self.input.channel_order == "RGB" else f":{self.input.channel_order}"
        return f"{self.weights_sha256}:{'fp32' if self.precision == 'fp32' else self.precision}{order}"

    @property
    def threshold(self) -> float | None:
        """The default decision threshold on cosine scores (the calibrated one at the target FAR), or None."""
        value = self.thresholds.get("default")
        return None if value is None else float(value)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def metadata(self) -> dict[str, str]:
        """The ``{CARD_KEY: json}`` mapping for a safetensors header or ONNX metadata_props."""
        return {CARD_KEY: self.to_json()}

    @staticmethod
    def from_json(text: str, source: str = "the model file") -> ModelCard:
        """Parse a card; raises ValueError naming ``source`` when it is not a valid card."""
        try:
            values = json.loads(text)
            values["input"] = InputContract(**values.get("input", {}))
            return ModelCard(**values)
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            raise ValueError(f"the model card in {source} is not valid ({err}); re-create it with "
                             "marginface.inference.card.ModelCard and rewrite the file") from err

    def describe(self) -> str:
        """A few lines a person reads (``marginface info``)."""
        i = self.input
        lines = [
            f"backbone      {self.backbone} {self.backbone_kwargs}  D={self.embedding_size}  ({self.precision})",
            f"input         {i.size}x{i.size} {i.channel_order}, (x - {i.mean}) / {i.std}, template {i.template}, "
            f"flip TTA {'on' if i.flip_tta else 'off'}",
            f"weights       sha256 {self.weights_sha256[:16]}...  (card from {self.source})",
        ]
        if self.loss:
            lines.append(f"loss          {self.loss.get('name')} {self.loss.get('params', {})}")
        if self.training_data:
            lines.append("training data " + ", ".join(f"{k}={v}" for k, v in self.training_data.items()))
        if self.validation:
            lines.append("validation    " + ", ".join(f"{k}={_short(v)}" for k, v in self.validation.items()))
        if self.thresholds:
            # the decision threshold first, with float32's 9 significant digits: 0.99999994 is not 1
            first = sorted(self.thresholds, key=lambda k: (k not in ("default", "far"), k != "default"))
            lines.append("thresholds    " + ", ".join(f"{k}={_short(self.thresholds[k], 9)}" for k in first))
        else:
            lines.append("thresholds    none calibrated (marginface calibrate MODEL --pairs ...)")
        return "\n".join(lines)


def _check_int(name: str, value: Any, bounds: tuple[int, int]) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"card {name} must be an integer in [{bounds[0]}, {bounds[1]}], got {value!r}: the card is "
                         "damaged or not for this kind of model")


def _short(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over ``name, dtype, shape, bytes`` of every tensor, in sorted name order (hex).

    Independent of memory layout and device: tensors are hashed as contiguous CPU data.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """:func:`tensors_sha256` for numpy arrays (ONNX initializers)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype}|{tuple(array.shape)}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def backbone_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone's state dict from a file's tensors: the ``backbone.*`` ones unprefixed, else all."""
    prefixed = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
    return prefixed or dict(tensors)


#: defaults of the run-config fields a card reads, for a ``config.json`` written before a field existed. They are
#: :class:`~marginface.training.config.TrainConfig`'s (a test pins them); models/ reads the run's config as the
#: plain mapping training wrote (``dataclasses.asdict``) and never imports training.
RUN_CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"backbone": "iresnet50", "embedding_size": 512, "output": "E", "dropout": 0.0, "params": {}},
    "loss": {"name": "arcface", "params": {}, "head": "dense"},
    "data": {"source": "synthetic", "path": None},
}


def run_config_sections(config: Any) -> dict[str, dict[str, Any]]:
    """The ``model``, ``loss`` and ``data`` sections a card reads, from a run config given as the caller has it: a
    mapping (a ``config.json`` document) or a dataclass instance (the trainer's ``TrainConfig``); missing fields
    take :data:`RUN_CONFIG_DEFAULTS`.

    Raises:
        ValueError: ``config`` is neither, or a section is not a mapping.
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise ValueError(f"a run config must be a mapping or a config dataclass, got {type(config).__name__}")
    sections = {}
    for name, defaults in RUN_CONFIG_DEFAULTS.items():
        values = config.get(name) or {}
        if not isinstance(values, Mapping):
            raise ValueError(f"run config section {name} must be a mapping, got {values!r}")
        sections[name] = {**defaults, **values}
    return sections


def training_card(config: Any, num_identities: int, num_images: int, validation: Mapping[str, Any],
                  backbone_state: Mapping[str, torch.Tensor]) -> ModelCard:
    """The card of a model trained by :class:`~marginface.training.trainer.Trainer` with ``config``.

    Args:
        config: the run's config: its ``TrainConfig`` or the mapping of its ``config.json``
            (:func:`run_config_sections`).
        num_identities, num_images: the training set's size.
        validation: the validation results of these weights (``{}`` when none ran).
        backbone_state: the backbone's state dict (hashed into ``weights_sha256``).
    """
    sections = run_config_sections(config)
    model, loss, data = sections["model"], sections["loss"], sections["data"]
    kwargs = {"output": model["output"], "dropout": float(model["dropout"]), **model["params"]}
    return ModelCard(
        backbone=model["backbone"], embedding_size=model["embedding_size"], backbone_kwargs=kwargs,
        weights_sha256=tensors_sha256(backbone_state),
        loss={"name": loss["name"], "params": dict(loss["params"]), "head": loss["head"]},
        training_data={"kind": data["source"], "path": data["path"], "identities": int(num_identities),
                       "images": int(num_images)},
        validation={k: (float(v) if isinstance(v, float | np.floating) else v) for k, v in validation.items()},
        source="marginface-train",
    )


def card_from_run_config(path: str, backbone_state: Mapping[str, torch.Tensor]) -> ModelCard:
    """A card for a legacy file from its run's ``config.json`` (training data sizes and validation unknown).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: ``path`` is not a JSON run config.
    """
    from pathlib import Path

    try:
        values = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"the run config {path} is not JSON ({err}); give the run's config.json") from err
    card = training_card(values, 0, 0, {}, backbone_state)
    data = run_config_sections(values)["data"]
    card.training_data = {"kind": data["source"], "path": data["path"]}
    card.source = f"run config {path}"
    return card
