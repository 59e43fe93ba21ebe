"""ONNX models: our exports (card in ``metadata_props``, initializers hashed) and foreign recognition graphs.

For a graph without a card the contract is insightface's own ``model_zoo/arcface_onnx.py``: the app decodes BGR
with OpenCV and ``cv2.dnn.blobFromImages(..., swapRB=True)`` hands the network **RGB** planes, normalised by
``(x - 127.5) / 127.5`` - unless the graph's first nodes normalise by themselves (:func:`onnx_input_affine`),
which then take raw 0..255 pixels (mean 0, std 1). onnx and onnxruntime are imported where used (optional extras).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from marginface.models.card import CARD_KEY, InputContract, ModelCard, arrays_sha256
from marginface.models.loaded import SUPPORTED, LoadedModel

#: ONNX metadata key holding the hash of the graph's initializers (checked against the graph on load).
ONNX_HASH_KEY = "marginface.onnx_sha256"


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


def read_onnx(path: Path) -> Any:
    """The ONNX ``ModelProto`` at ``path``; ValueError naming the file when it is not one."""
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as err:  # protobuf DecodeError and friends
        raise ValueError(f"{path} is not a readable ONNX model ({err}); supported: {SUPPORTED}") from err


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


def load_onnx(path: Path, device: str, threads: int = 0) -> LoadedModel:
    """An ONNX model: its card from ``metadata_props`` (hash checked), else insightface's contract."""
    model = read_onnx(path)
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


def set_onnx_metadata(model: Any, values: dict[str, str]) -> None:
    """Set (replace) ``metadata_props`` entries of an ONNX ModelProto in place."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    for key, value in [*keep, *values.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
