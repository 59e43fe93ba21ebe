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
  mxnet by :mod:`marginface.inference.mxnet_format`: insightface's MobileFaceNet graph becomes our
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marginface.files import atomic_write
from marginface.inference.card import (
    CARD_KEY,
    InputContract,
    ModelCard,
    arrays_sha256,
    backbone_tensors,
    card_from_run_config,
    tensors_sha256,
)

#: ONNX metadata key holding the hash of the graph's initializers (checked against the graph on load).
ONNX_HASH_KEY = "marginface.onnx_sha256"
#: safetensors metadata key holding the MXNet graph (nnvm JSON) of a converted ``mxnet_graph`` model.
MXNET_SYMBOL_KEY = "marginface.mxnet_symbol"
MXNET_GRAPH = "mxnet_graph"
_SUPPORTED = (".safetensors (marginface), .pth (arcface_torch IResNet/MobileFaceNet/ViT, CASIA MobileFaceNet), "
              ".onnx, MXNet prefix-0000.params + prefix-symbol.json")


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


class EvalInputAdapter(torch.nn.Module):
    """A loaded model behind the evaluation contract: ``(B, 3, S, S)`` RGB in [-1, 1] as ``(x - 127.5) / 127.5``
    -> ``(B, D)`` raw embeddings, whatever the model's own contract (channel order, mean/std, ONNX).

    ``marginface eval`` feeds that contract to every backbone; this undoes it to pixels and applies the card's,
    so a model normalised otherwise (an MXNet zoo model's ``(x - 127.5) / 128``) is evaluated as it was trained.
    """

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__()
        self.loaded = loaded
        self.embedding_size = loaded.card.embedding_size
        if isinstance(loaded.runner, torch.nn.Module):
            self.model = loaded.runner  # registered, so .to(device) / .eval() reach it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x.float() * 127.5 + 127.5
        if self.loaded.kind == "torch":
            return self.loaded.runner(self.loaded.normalise_input(pixels))
        out = self.loaded.runner(self.loaded.normalise_input(pixels).cpu().numpy())
        return torch.from_numpy(out).to(x.device)


class OnnxRunner:
    """An onnxruntime session as ``(B, 3, S, S) float32 -> (B, D) float32`` for any B.

    A graph whose input batch is fixed (``(1, 3, 112, 112)`` exports) is run in chunks of that size, the last one
    padded with copies of its last image; a graph whose batch is symbolic but fixed inside (a ``Reshape`` to
    ``[1, -1]``) fails under onnxruntime for B > 1 and is then run one image at a time from then on. Any other
    onnxruntime failure is a ValueError naming the model and the input shape.
    """

    def __init__(self, path: str, device: str = "cpu", threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.path = path
        self.session = ort.InferenceSession(path, options, providers=providers)
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.fixed_batch = first.shape[0] if isinstance(first.shape[0], int) and first.shape[0] > 0 else None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.fixed_batch is None:
            try:
                return self._run(x)
            except ValueError:
                if len(x) == 1:
                    raise
                self.fixed_batch = 1  # the batch is fixed inside the graph: one image at a time from now on
        chunks = []
        for start in range(0, len(x), self.fixed_batch):
            chunk = x[start : start + self.fixed_batch]
            pad = self.fixed_batch - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            chunks.append(self._run(chunk)[: self.fixed_batch - pad])
        return np.concatenate(chunks)

    def _run(self, x: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float32)
        except Exception as err:  # onnxruntime raises its own Fail / InvalidArgument / RuntimeException types
            raise ValueError(f"onnxruntime could not run {self.path} on an input of shape {tuple(x.shape)}: {err}; "
                             "check that the model takes (B, 3, 112, 112) float32 faces") from err


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
    if path.name.endswith((".params", "-symbol.json")) or path.with_name(path.name + "-symbol.json").is_file():
        return _load_mxnet(path, device)
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
    if card.backbone == MXNET_GRAPH:
        return LoadedModel(card, str(path), _build_mxnet_graph(card, state, metadata, path, device), "torch", device)
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


# ------------------------------------------------------------------------------------------ MXNet
def _load_mxnet(path: Path, device: str) -> LoadedModel:
    """An MXNet model: mapped onto our mobilefacenet when recognised, else run as its graph."""
    from marginface.inference.mxnet_format import load_mxnet, mobilefacenet_from_graph

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

    from marginface.inference.mxnet_format import MxnetGraph, parse_symbol

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


# ------------------------------------------------------------------------------------------ insightface .pth
def _load_insightface_pth(path: Path, device: str) -> LoadedModel:
    """A ``.pth`` state dict of a layout :mod:`marginface.backbones.foreign` recognises, on our backbone."""
    from marginface.backbones import foreign
    from marginface.backbones.weights import _read_insightface

    try:
        state = _read_insightface(path)
    except Exception as err:  # torch.load raises UnpicklingError / RuntimeError for foreign files
        raise ValueError(f"{path} is not a PyTorch state dict of tensors ({err}); supported: {_SUPPORTED}") from err
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
    from marginface import backbones
    from marginface.backbones.weights import _load_strict

    model = backbones.create(card.backbone, embedding_size=card.embedding_size, **card.backbone_kwargs)
    try:
        _load_strict(model, state, source=f"{path} ({architecture} layout, renamed onto {card.backbone})")
    except ValueError as err:
        missing = sorted(set(model.state_dict()) - set(state))
        first = f"; first missing key of ours: {missing[0]}" if missing else ""
        raise ValueError(f"{err}{first}") from err
    card.weights_sha256 = tensors_sha256(model.state_dict())
    return model.to(device).eval()


def _load_iresnet_pth(state: dict[str, torch.Tensor], path: Path, device: str) -> LoadedModel:
    from marginface import backbones
    from marginface.backbones.weights import _load_strict, insightface_to_marginface

    depth, embedding_size = _iresnet_shape(state, path)
    gamma = state.get("features.weight")
    fix_gamma = gamma is None or bool(torch.all(gamma == 1))
    kwargs = {"output": "E", "fix_gamma": fix_gamma}
    card = ModelCard(backbone=f"iresnet{depth}", embedding_size=embedding_size, backbone_kwargs=kwargs,
                     source="insightface-pth", training_data={"kind": "insightface (unknown)"})
    ours = insightface_to_marginface(state, fix_gamma=fix_gamma)
    model = backbones.create(card.backbone, embedding_size=embedding_size, **kwargs)
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
    """The input contract of an ONNX face model without a card.

    When the graph opens with elementwise ``Sub``/``Add``/``Mul``/``Div`` by constants (:func:`onnx_input_affine`,
    e.g. mxnet conversions' ``(x - 127.5) * 0.0078125`` or a PyTorch export's ``(x / 255 - 0.5) / 0.5``) it
    normalises itself and takes raw 0..255 pixels (mean 0, std 1). Otherwise insightface's own rule
    (``model_zoo/arcface_onnx.py``) applies: RGB, ``(x - 127.5) / 127.5``; its test - ``Sub`` and ``Mul`` among the
    names of the first 8 nodes - is kept for graphs whose constants are computed rather than stored.
    """
    names = [node.name for node in model.graph.node[:8]]
    find_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    find_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    in_graph = onnx_input_affine(model) is not None or (find_sub and find_mul)
    mean, std = ([0.0] * 3, [1.0] * 3) if in_graph else ([127.5] * 3, [127.5] * 3)
    size = _static_dim(model.graph.input[0], 2) or 112
    return InputContract(size=size, channel_order="RGB", mean=mean, std=std)


_AFFINE_OPS = ("Sub", "Add", "Mul", "Div")


def onnx_input_affine(model: Any) -> tuple[float, float] | None:
    """``(mean, std)`` such that the graph's first elementwise ops compute ``(x - mean) / std`` on its input, or
    None when the input does not go through such ops with scalar constants (stored as initializers or
    ``Constant`` nodes). ``Div(x, 255), Sub(., 0.5), Div(., 0.5)`` gives ``(127.5, 127.5)``."""
    from onnx import numpy_helper

    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    current, scale, shift, steps = model.graph.input[0].name, 1.0, 0.0, 0  # y = scale * x + shift
    while True:
        users = [n for n in model.graph.node if current in n.input]
        if len(users) != 1 or users[0].op_type not in _AFFINE_OPS or len(users[0].input) != 2:
            break
        node = users[0]
        other = node.input[1] if node.input[0] == current else node.input[0]
        value = constants.get(other)
        if value is None or value.size != 1 or (node.op_type in ("Sub", "Div") and node.input[0] != current):
            break
        c = float(value.reshape(()))
        if node.op_type in ("Mul", "Div") and c == 0:
            break
        scale, shift = {"Sub": (scale, shift - c), "Add": (scale, shift + c), "Mul": (scale * c, shift * c),
                        "Div": (scale / c, shift / c)}[node.op_type]
        current, steps = node.output[0], steps + 1
    if steps == 0 or scale <= 0:
        return None
    return -shift / scale, 1.0 / scale


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
        if ONNX_HASH_KEY not in props:  # a card copied into a foreign graph: its weights claim is unverifiable,
            card.weights_sha256 = actual  # so the graph is its own model (no gallery of another model accepts it)
            card.source = f"{card.source}, card without the graph's hash"
    else:
        dim = _static_dim(model.graph.output[0], 1)
        if dim is None:
            raise ValueError(f"{path}: an ONNX model without a card must have a (B, D) output with static D")
        affine = onnx_input_affine(model)
        source = (f"onnx (the graph normalises: (x - {affine[0]:g}) / {affine[1]:g})" if affine else
                  "insightface-onnx")
        card = ModelCard(backbone="onnx", embedding_size=dim, input=insightface_onnx_contract(model),
                         weights_sha256=actual, source=source)
    runner = OnnxRunner(str(path), device, threads)
    return LoadedModel(card, str(path), runner, "onnx", device)


# ------------------------------------------------------------------------------------------ writing cards
def write_card(path: str | os.PathLike, card: ModelCard) -> None:
    """Rewrite ``path`` (safetensors or ONNX) with ``card`` in its metadata, atomically (temp + rename)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        import onnx

        model = _read_onnx(path)
        set_onnx_metadata(model, {**card.metadata(), ONNX_HASH_KEY: onnx_weights_sha256(model)})
        atomic_write(path, lambda tmp: onnx.save(model, str(tmp)))
    else:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(path))
        metadata = {**_safetensors_metadata(path), **card.metadata()}
        # the rewritten file gets the mode the user's umask gives (not safetensors' 0600): atomic_write sees to it
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def set_onnx_metadata(model: Any, values: dict[str, str]) -> None:
    """Set (replace) ``metadata_props`` entries of an ONNX ModelProto in place."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    for key, value in [*keep, *values.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
