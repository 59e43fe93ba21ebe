"""``load_model(path)``: a face model from its file alone, with its card, behind one ``forward``.

Supported files:

- ``.safetensors`` written by marginface (``best.safetensors``, a checkpoint's ``model.safetensors`` or a
  checkpoint folder): the card in the header says how to build the backbone. Files from before cards existed
  load when told what they are (``backbone=``/``embedding_size=``, or ``config=`` the run's ``config.json``).
- ``.pth`` state dicts (read with ``torch.load(weights_only=True)``) of insightface arcface_torch IResNets,
  MobileFaceNets (``mbf``, ``mbf_large``) and ViTs, and the CASIA MobileFaceNet layout, renamed onto our
  backbones by :mod:`marginface.backbones.foreign` (sizes read from the tensor names and shapes); contract RGB,
  ``(x - 127.5) / 127.5``. Any other layout is refused naming its top-level modules.
- MXNet model-zoo files (``model-0000.params``, ``model-symbol.json`` or the prefix ``model``), read without
  mxnet by :mod:`marginface.models.mxnet_format`: insightface's MobileFaceNet graph becomes our
  ``mobilefacenet``; any other graph of supported operators runs as an ``MxnetGraph`` (card backbone
  ``mxnet_graph``). The graph's ``(x - a) * b`` normalisation goes into the card; channel order RGB.
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
from pathlib import Path
from typing import Any

import torch

from marginface.files import atomic_write
from marginface.models.card import (
    CARD_KEY,
    InputContract,
    ModelCard,
    backbone_tensors,
    card_from_run_config,
    tensors_sha256,
)
from marginface.models.loaded import SUPPORTED, LoadedModel
from marginface.models.onnx_format import ONNX_HASH_KEY, load_onnx, onnx_weights_sha256, read_onnx, set_onnx_metadata
from marginface.models.pth_format import load_pth
from marginface.runs.layout import RunDir, model_file, run_of

#: safetensors metadata key holding the MXNet graph (nnvm JSON) of a converted ``mxnet_graph`` model.
MXNET_SYMBOL_KEY = "marginface.mxnet_symbol"
MXNET_GRAPH = "mxnet_graph"


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
    path = model_file(path)  # a checkpoint folder: its model.safetensors
    if path.is_dir():
        best = RunDir(path).best
        hint = f"; this looks like a run folder: its model is {best}" if best.is_file() else ""
        raise IsADirectoryError(f"{path} is a folder, expected a model file ({SUPPORTED}){hint}")
    if path.name.endswith((".params", "-symbol.json")) or path.with_name(path.name + "-symbol.json").is_file():
        return _load_mxnet(path, device)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _load_safetensors(path, device, backbone, embedding_size, config, backbone_kwargs)
    if suffix in (".pth", ".pt"):
        return load_pth(path, device)
    if suffix == ".onnx":
        return load_onnx(path, device, threads)
    raise ValueError(f"{path}: unknown model format {suffix!r}; supported: {SUPPORTED}")


def read_card(path: str | os.PathLike) -> ModelCard | None:
    """The card stored in a safetensors or ONNX file, or None when it has none (legacy / foreign file)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        props = {p.key: p.value for p in read_onnx(path).metadata_props}
        return ModelCard.from_json(props[CARD_KEY], str(path)) if CARD_KEY in props else None
    metadata = _safetensors_metadata(path)
    return ModelCard.from_json(metadata[CARD_KEY], str(path)) if CARD_KEY in metadata else None


def read_tensors(path: str | os.PathLike, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a marginface safetensors file whose names start with ``prefix``, with it removed, on the CPU
    (``prefix="loss."``: the loss state a training saved beside the backbone, e.g. class centres ``(C, D)``)."""
    from safetensors.torch import load_file

    return {k[len(prefix):]: v for k, v in load_file(str(path)).items() if k.startswith(prefix)}


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for a foreign or torn file
        raise ValueError(f"{path} is not a readable safetensors model ({err}); supported: {SUPPORTED}") from err


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
    if card.backbone == MXNET_GRAPH:
        return LoadedModel(card, str(path), _build_mxnet_graph(card, state, metadata, path, device), "torch", device)
    return LoadedModel(card, str(path), _build_torch(card, state, path, device), "torch", device)


def _no_card_message(path: Path) -> str:
    beside = run_of(path).config  # beside best.safetensors; above a checkpoint's model.safetensors
    where = "beside it" if beside.parent == path.parent else "in its run folder"
    hint = (f" The run's config.json is {where}: load_model({str(path)!r}, config={str(beside)!r})."
            if beside.is_file() else "")
    return (f"{path} has no model card (written before marginface stored one); say what it is: "
            f"load_model(path, backbone='iresnet50', embedding_size=512[, output='E']) or "
            f"load_model(path, config='RUN/config.json') (`backbone`/`embedding_size` or `config`).{hint}")


def _build_torch(card: ModelCard, state: dict[str, torch.Tensor], path: Path, device: str) -> torch.nn.Module:
    from marginface import backbones
    from marginface.backbones.weights import load_strict

    try:
        model = backbones.create(card.backbone, embedding_size=card.embedding_size, **card.backbone_kwargs)
    except TypeError as err:
        raise ValueError(f"the card of {path} names backbone kwargs {card.backbone_kwargs} that "
                         f"{card.backbone} does not take: {err}") from err
    try:
        load_strict(model, state, source=str(path))
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


# ------------------------------------------------------------------------------------------ MXNet
def _load_mxnet(path: Path, device: str) -> LoadedModel:
    """An MXNet model: mapped onto our mobilefacenet when recognised, else run as its graph."""
    from marginface.models.mxnet_format import load_mxnet, mobilefacenet_from_graph

    graph, params, _ = load_mxnet(path)
    mapped = mobilefacenet_from_graph(graph)
    source = {"kind": "insightface mxnet model zoo (unknown)", "path": str(params)}
    if mapped is not None:
        model, kwargs, (mean, std) = mapped
        card = ModelCard(backbone="mobilefacenet", embedding_size=model.embedding_size, backbone_kwargs=kwargs,
                         input=InputContract(mean=[mean] * 3, std=[std] * 3), source="insightface-mxnet",
                         training_data=source, weights_sha256=tensors_sha256(model.state_dict()))
        return LoadedModel(card, str(path), model.to(device).eval(), "torch", device)
    with torch.no_grad():
        dim = graph(torch.zeros(1, 3, 112, 112)).reshape(1, -1).shape[1]
    graph.embedding_size = dim
    # the graph normalises (or not) by itself: it is fed raw 0..255 pixels
    card = ModelCard(backbone=MXNET_GRAPH, embedding_size=dim, input=InputContract(mean=[0.0] * 3, std=[1.0] * 3),
                     source="insightface-mxnet", training_data=source,
                     weights_sha256=tensors_sha256(graph.state_dict()))
    return LoadedModel(card, str(path), graph.to(device).eval(), "torch", device)


def _build_mxnet_graph(card: ModelCard, state: dict[str, torch.Tensor], metadata: dict[str, str], path: Path,
                       device: str) -> torch.nn.Module:
    """A converted ``mxnet_graph`` model: the graph from the header, the weights from the tensors."""
    import json

    from marginface.models.mxnet_format import MxnetGraph, parse_symbol

    if MXNET_SYMBOL_KEY not in metadata:
        raise ValueError(f"{path}: its card says {MXNET_GRAPH} but the header has no {MXNET_SYMBOL_KEY}; "
                         "convert the MXNet model again (marginface convert)")
    symbol = parse_symbol(json.loads(metadata[MXNET_SYMBOL_KEY]), str(path))
    graph = MxnetGraph(symbol, state, source=str(path))
    actual = tensors_sha256(graph.state_dict())
    if card.weights_sha256 and card.weights_sha256 != actual:
        raise ValueError(f"the card of {path} disagrees with its weights (hash {actual[:16]}... vs the card's "
                         f"{card.weights_sha256[:16]}...); convert the MXNet model again")
    graph.embedding_size = card.embedding_size
    return graph.to(device).eval()


def convert_model(src: str | os.PathLike, out: str | os.PathLike) -> ModelCard:
    """Write the model at ``src`` (any torch format :func:`load_model` reads) as our safetensors file with its card.

    An MXNet graph that is not mapped onto one of our backbones is stored with its graph in the header
    (``marginface.mxnet_symbol``) and loads back as an ``mxnet_graph``.

    Raises:
        ValueError: ``out`` is not a ``.safetensors`` path, or ``src`` is an ONNX graph (no torch module).
    """
    from safetensors.torch import save_file

    out = Path(out)
    if out.suffix.lower() != ".safetensors":
        raise ValueError(f"convert writes a .safetensors file; {out} has another extension")
    loaded = load_model(src)
    if loaded.kind != "torch":
        raise ValueError(f"{src} is an ONNX graph; convert reads torch-loadable formats (MXNet, .pth, safetensors)")
    tensors = {k: v.detach().cpu().contiguous() for k, v in loaded.runner.state_dict().items()}
    metadata = loaded.card.metadata()
    if loaded.card.backbone == MXNET_GRAPH:
        metadata[MXNET_SYMBOL_KEY] = loaded.runner.symbol_json()
    atomic_write(out, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return loaded.card


# ------------------------------------------------------------------------------------------ writing cards
def write_card(path: str | os.PathLike, card: ModelCard) -> None:
    """Rewrite ``path`` (safetensors or ONNX) with ``card`` in its metadata, atomically (temp + rename)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        import onnx

        model = read_onnx(path)
        set_onnx_metadata(model, {**card.metadata(), ONNX_HASH_KEY: onnx_weights_sha256(model)})
        atomic_write(path, lambda tmp: onnx.save(model, str(tmp)))
    else:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(path))
        metadata = {**_safetensors_metadata(path), **card.metadata()}
        # the rewritten file gets the mode the user's umask gives (not safetensors' 0600): atomic_write sees to it
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
