"""``load_model(path)``: a face model from its file alone, with its card, behind one ``forward``.

Supported files:

- ``.safetensors`` written by marginface (``best.safetensors``, a checkpoint's ``model.safetensors`` or a
  checkpoint folder): the card in the header says how to build the backbone. Files from before cards existed
  load when told what they are (``backbone=``/``embedding_size=``, or ``config=`` the run's ``config.json``).
- insightface arcface_torch ``.pth`` IResNet state dicts (read with ``torch.load(weights_only=True)``): the
  depth and embedding size are read from the tensor names and shapes; contract RGB, ``(x - 127.5) / 127.5``.
- ``.onnx``: our exports (card in ``metadata_props``) and insightface recognition models (``w600k_r50.onnx``,
  ...). For those the contract is insightface's own ``model_zoo/arcface_onnx.py``: the app decodes BGR with
  OpenCV and ``cv2.dnn.blobFromImages(..., swapRB=True)`` hands the network **RGB** planes, normalised by
  ``(x - 127.5) / 127.5`` — unless the graph's first nodes are ``Sub``/``Mul`` (mxnet conversions that
  normalise inside the graph), which take raw 0..255 pixels (mean 0, std 1).

Every model is used through :meth:`LoadedModel.forward` on ``(B, 3, S, S)`` float32 **RGB pixels in 0..255**;
the card's channel order and normalisation are applied there, so callers never mix them up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marginface.inference.card import (
    CARD_KEY,
    InputContract,
    ModelCard,
    arrays_sha256,
    backbone_tensors,
    card_from_run_config,
    tensors_sha256,
)
from marginface.paths import respect_umask

#: ONNX metadata key holding the hash of the graph's initializers (checked against the graph on load).
ONNX_HASH_KEY = "marginface.onnx_sha256"
_SUPPORTED = ".safetensors (marginface), .pth (insightface arcface_torch IResNet), .onnx"


@dataclass
class LoadedModel:
    """A model and its card. ``runner`` is an ``nn.Module`` (torch) or an onnxruntime session wrapper."""

    card: ModelCard
    path: str
    runner: Any
    kind: str  # "torch" or "onnx"
    device: str = "cpu"

    def normalise_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) RGB 0..255 -> the network's input per the card (channel order, (x - mean) / std)."""
        contract = self.card.input
        if contract.channel_order == "BGR":
            pixels = pixels.flip(1)
        mean = torch.tensor(contract.mean, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(contract.std, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
        return (pixels.float() - mean) / std

    def forward(self, pixels: torch.Tensor | np.ndarray) -> np.ndarray:
        """(B, 3, S, S) float RGB pixels 0..255 -> (B, D) float32 raw (un-normalised) embeddings."""
        pixels = torch.as_tensor(pixels, dtype=torch.float32)
        size = self.card.input.size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            raise ValueError(f"model input must be (B, 3, {size}, {size}), got {tuple(pixels.shape)}")
        if self.kind == "torch":
            with torch.inference_mode():
                out = self.runner(self.normalise_input(pixels.to(self.device)))
            return out.float().cpu().numpy()
        return self.runner(self.normalise_input(pixels).numpy())

    def embed_pixels(self, pixels: torch.Tensor | np.ndarray, flip: bool | None = None) -> np.ndarray:
        """(B, 3, S, S) RGB 0..255 -> (B, D) float32 L2-normalised, with flip TTA per the card by default.

        Flip TTA sums the raw embeddings of the crop and its mirror before normalising (insightface's rule).
        """
        flip = self.card.input.flip_tta if flip is None else flip
        pixels = torch.as_tensor(pixels, dtype=torch.float32)
        emb = self.forward(pixels)
        if flip:
            emb = emb + self.forward(pixels.flip(3))
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        if not np.isfinite(emb).all() or (norms == 0).any():
            raise ValueError(f"the model {self.path} produced NaN/inf or zero embeddings; check the weights")
        return (emb / norms).astype(np.float32)


class OnnxRunner:
    """An onnxruntime session as ``(B, 3, S, S) float32 -> (B, D) float32``; loops when the batch is fixed."""

    def __init__(self, path: str, device: str = "cpu", threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(path, options, providers=providers)
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.fixed_batch = first.shape[0] if isinstance(first.shape[0], int) else None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.fixed_batch in (None, x.shape[0]):
            return np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float32)
        return np.concatenate([self(x[i : i + 1]) for i in range(x.shape[0])])


def load_model(path: str | os.PathLike, *, device: str = "cpu", backbone: str | None = None,
               embedding_size: int | None = None, config: str | os.PathLike | None = None, threads: int = 0,
               **backbone_kwargs: Any) -> LoadedModel:
    """Load a face model from ``path`` (see the module docstring for the formats) in eval mode.

    Args:
        path: model file (or a checkpoint folder holding ``model.safetensors``).
        device: ``"cpu"``, ``"cuda"``...; ONNX models use onnxruntime's CUDA provider when asked and present.
        backbone, embedding_size, backbone_kwargs: only for safetensors files without a card (legacy).
        config: only for legacy files: the run's ``config.json`` the weights were trained with.
        threads: intra-op threads of an ONNX model's onnxruntime session (0: onnxruntime's default); torch
            models use torch's process-wide setting (``FaceRecognizer`` sets it).

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: not a model file; a legacy file given no description; a card that disagrees with the
            weights (shapes or hash).
    """
    path = Path(path)
    if path.is_dir() and (path / "model.safetensors").is_file():
        path = path / "model.safetensors"
    if path.is_dir():
        best = path / "best.safetensors"
        hint = f"; this looks like a run folder: its model is {best}" if best.is_file() else ""
        raise IsADirectoryError(f"{path} is a folder, expected a model file ({_SUPPORTED}){hint}")
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _load_safetensors(path, device, backbone, embedding_size, config, backbone_kwargs)
    if suffix in (".pth", ".pt"):
        return _load_insightface_pth(path, device)
    if suffix == ".onnx":
        return _load_onnx(path, device, threads)
    raise ValueError(f"{path}: unknown model format {suffix!r}; supported: {_SUPPORTED}")


def read_card(path: str | os.PathLike) -> ModelCard | None:
    """The card stored in a safetensors or ONNX file, or None when it has none (legacy / foreign file)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        props = {p.key: p.value for p in _read_onnx(path).metadata_props}
        return ModelCard.from_json(props[CARD_KEY], str(path)) if CARD_KEY in props else None
    metadata = _safetensors_metadata(path)
    return ModelCard.from_json(metadata[CARD_KEY], str(path)) if CARD_KEY in metadata else None


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for a foreign or torn file
        raise ValueError(f"{path} is not a readable safetensors model ({err}); supported: {_SUPPORTED}") from err


def _load_safetensors(path: Path, device: str, backbone: str | None, embedding_size: int | None,
                      config: str | os.PathLike | None, kwargs: dict[str, Any]) -> LoadedModel:
    from safetensors.torch import load_file

    metadata = _safetensors_metadata(path)
    state = backbone_tensors(load_file(str(path), device="cpu"))
    if CARD_KEY in metadata:
        card = ModelCard.from_json(metadata[CARD_KEY], str(path))
    elif backbone is not None:
        card = ModelCard(backbone=backbone, embedding_size=embedding_size or 512, backbone_kwargs=dict(kwargs),
                         weights_sha256=tensors_sha256(state), source="user")
    elif config is not None:
        card = card_from_run_config(str(config), state)
    else:
        raise ValueError(_no_card_message(path))
    return LoadedModel(card, str(path), _build_torch(card, state, path, device), "torch", device)


def _no_card_message(path: Path) -> str:
    beside = path.parent / "config.json"
    hint = (f" The run's config.json is beside it: load_model({str(path)!r}, config={str(beside)!r})."
            if beside.is_file() else "")
    return (f"{path} has no model card (written before marginface stored one); say what it is: "
            f"load_model(path, backbone='iresnet50', embedding_size=512[, output='E']) or "
            f"load_model(path, config='RUN/config.json') (CLI: --backbone/--embedding-size or --config).{hint}")


def _build_torch(card: ModelCard, state: dict[str, torch.Tensor], path: Path, device: str) -> torch.nn.Module:
    from marginface import backbones
    from marginface.backbones.weights import _load_strict

    try:
        model = backbones.create(card.backbone, embedding_size=card.embedding_size, **card.backbone_kwargs)
    except TypeError as err:
        raise ValueError(f"the card of {path} names backbone kwargs {card.backbone_kwargs} that "
                         f"{card.backbone} does not take: {err}") from err
    try:
        _load_strict(model, state, source=str(path))
    except ValueError as err:
        raise ValueError(f"the card of {path} disagrees with its weights ({card.backbone}, "
                         f"D={card.embedding_size}): {err}") from err
    actual = tensors_sha256(state)
    if card.weights_sha256 and card.weights_sha256 != actual:
        raise ValueError(f"the card of {path} disagrees with its weights: card hash {card.weights_sha256[:16]}... "
                         f"but the weights hash to {actual[:16]}...; the file was edited or its card copied from "
                         "another model — rewrite the card (marginface.inference.write_card)")
    card.weights_sha256 = actual
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------ insightface .pth
def _load_insightface_pth(path: Path, device: str) -> LoadedModel:
    from marginface import backbones
    from marginface.backbones.weights import _read_insightface, insightface_to_marginface

    try:
        state = _read_insightface(path)
    except Exception as err:  # torch.load raises UnpicklingError / RuntimeError for foreign files
        raise ValueError(f"{path} is not an insightface IResNet state dict ({err}); supported: {_SUPPORTED}") from err
    state = {k.removeprefix("module."): v for k, v in state.items()}
    depth, embedding_size = _iresnet_shape(state, path)
    gamma = state.get("features.weight")
    fix_gamma = gamma is None or bool(torch.all(gamma == 1))
    kwargs = {"output": "E", "fix_gamma": fix_gamma}
    card = ModelCard(backbone=f"iresnet{depth}", embedding_size=embedding_size, backbone_kwargs=kwargs,
                     source="insightface-pth", training_data={"kind": "insightface (unknown)"})
    ours = insightface_to_marginface(state, fix_gamma=fix_gamma)
    model = backbones.create(card.backbone, embedding_size=embedding_size, **kwargs)
    from marginface.backbones.weights import _load_strict

    _load_strict(model, ours, source=str(path))
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


# ------------------------------------------------------------------------------------------ ONNX
def _read_onnx(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as err:  # protobuf DecodeError and friends
        raise ValueError(f"{path} is not a readable ONNX model ({err}); supported: {_SUPPORTED}") from err


def onnx_weights_sha256(model: Any) -> str:
    """Hash of an ONNX graph's initializers (name, dtype, shape, bytes)."""
    from onnx import numpy_helper

    return arrays_sha256({t.name: numpy_helper.to_array(t) for t in model.graph.initializer})


def insightface_onnx_contract(model: Any) -> InputContract:
    """insightface's rule (``arcface_onnx.py``): Sub + Mul among the first 8 nodes = normalised in-graph."""
    names = [node.name for node in model.graph.node[:8]]
    find_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    find_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    mean, std = ([0.0] * 3, [1.0] * 3) if (find_sub and find_mul) else ([127.5] * 3, [127.5] * 3)
    size = _static_dim(model.graph.input[0], 2) or 112
    return InputContract(size=size, channel_order="RGB", mean=mean, std=std)


def _static_dim(value_info: Any, axis: int) -> int | None:
    dims = value_info.type.tensor_type.shape.dim
    return int(dims[axis].dim_value) if len(dims) > axis and dims[axis].dim_value > 0 else None


def _load_onnx(path: Path, device: str, threads: int = 0) -> LoadedModel:
    model = _read_onnx(path)
    props = {p.key: p.value for p in model.metadata_props}
    actual = onnx_weights_sha256(model)
    if CARD_KEY in props:
        card = ModelCard.from_json(props[CARD_KEY], str(path))
        if props.get(ONNX_HASH_KEY) not in (None, actual):
            raise ValueError(f"the card of {path} disagrees with its weights: the graph's initializers hash to "
                             f"{actual[:16]}..., the card recorded {props[ONNX_HASH_KEY][:16]}...; re-export it")
    else:
        dim = _static_dim(model.graph.output[0], 1)
        if dim is None:
            raise ValueError(f"{path}: an ONNX model without a card must have a (B, D) output with static D")
        card = ModelCard(backbone="onnx", embedding_size=dim, input=insightface_onnx_contract(model),
                         weights_sha256=actual, source="insightface-onnx")
    runner = OnnxRunner(str(path), device, threads)
    return LoadedModel(card, str(path), runner, "onnx", device)


# ------------------------------------------------------------------------------------------ writing cards
def write_card(path: str | os.PathLike, card: ModelCard) -> None:
    """Rewrite ``path`` (safetensors or ONNX) with ``card`` in its metadata, atomically (temp + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix.lower() == ".onnx":
        import onnx

        model = _read_onnx(path)
        set_onnx_metadata(model, {**card.metadata(), ONNX_HASH_KEY: onnx_weights_sha256(model)})
        onnx.save(model, str(tmp))
    else:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(path))
        metadata = {**_safetensors_metadata(path), **card.metadata()}
        save_file(tensors, str(tmp), metadata=metadata)
        respect_umask(tmp)  # the rewritten file keeps the mode the user's umask gives (not safetensors' 0600)
    os.replace(tmp, path)


def set_onnx_metadata(model: Any, values: dict[str, str]) -> None:
    """Set (replace) ``metadata_props`` entries of an ONNX ModelProto in place."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    for key, value in [*keep, *values.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
