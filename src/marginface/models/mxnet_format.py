"""The old insightface model zoo without mxnet: read ``prefix-0000.params`` + ``prefix-symbol.json`` and run them.

Two parts, both written from the file formats (no mxnet, no pickle):

- :func:`read_ndarray_file` parses MXNet's NDArray list format (``mx.nd.save``) - the ``.params`` file:
  ``uint64 0x112, uint64 0, uint64 N``, then N arrays, then ``uint64 N`` names (``uint64 length`` + UTF-8,
  ``arg:`` / ``aux:`` prefixed).  Each array: ``uint32`` magic (``0xF993FAC8``/``C9``/``CA``: versions 1-3;
  anything else is the legacy layout whose first word is ``ndim``), for v2/v3 an ``int32`` storage type (only
  dense, 0, is read), the shape (``uint32 ndim`` + ``int64`` dims; legacy ``uint32`` dims), and unless it is
  empty the context (``int32`` device type + id), an ``int32`` dtype flag and the little-endian data.  Every
  count and size is checked against the bytes that remain before anything is allocated; a damaged file is a
  :class:`MxnetFormatError` naming the file and the byte offset.
- :class:`MxnetGraph` runs the symbol graph (``nodes`` in topological order, ``heads`` the output) in PyTorch:
  the operators of :data:`OPERATORS`, with MXNet's defaults (BatchNorm ``eps`` 1e-3 and ``fix_gamma`` True -
  gamma treated as 1 -, Convolution/Pooling stride 1 and pad 0, FullyConnected flattening its input, Dropout the
  identity at inference).  An operator outside that list is refused by name when the graph is built.

:func:`mobilefacenet_from_graph` maps a recognised graph (insightface's MobileFaceNet, ``model-y1``) onto our
``mobilefacenet`` backbone, which represents it exactly (see docs/inference.md): the in-graph normalisation
``(x - a) * b`` becomes the card's ``mean = a``, ``std = 1 / b``, MXNet's BatchNorm ``eps`` is folded into the
running variance (``var + eps_mxnet - eps_ours``), and our embedding layer's BatchNorm over the 7x7 map, which
insightface's graph does not have, is set to the identity.  The mapping is verified numerically (against
:class:`MxnetGraph` on the same weights) before it is accepted.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LIST_MAGIC = 0x112
ARRAY_MAGICS = {0xF993FAC8: 1, 0xF993FAC9: 2, 0xF993FACA: 3}
#: MXNet dtype flag -> numpy dtype (mshadow's type flags).
DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8, 6: np.int64}
MAX_NDIM = 32  # mshadow's limit; a larger ndim means we are reading garbage
MXNET_BN_EPS = 1e-3  # mxnet.symbol.BatchNorm's default eps (not torch's 1e-5)


class MxnetFormatError(ValueError):
    """A ``.params`` / ``-symbol.json`` file that is not what MXNet writes; the message names the file and offset."""


# ------------------------------------------------------------------------------------------------ .params
class _Reader:
    """Little-endian reads over a byte string that refuse to run past its end (naming the file and offset)."""

    def __init__(self, data: bytes, path: str) -> None:
        self.data, self.path, self.offset = data, path, 0

    @property
    def left(self) -> int:
        return len(self.data) - self.offset

    def fail(self, what: str) -> MxnetFormatError:
        return MxnetFormatError(f"{self.path}: {what} at byte offset {self.offset} (file size {len(self.data)}); "
                                "the file is truncated or not an MXNet .params file - download it again")

    def take(self, size: int, what: str) -> bytes:
        if size < 0 or size > self.left:
            raise self.fail(f"{what} needs {size} bytes but only {self.left} remain")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))[0]


def read_ndarray_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Parse an MXNet NDArray list file (``.params``) into ``{name: array}`` (names keep ``arg:``/``aux:``).

    Raises:
        FileNotFoundError: no file at ``path``.
        MxnetFormatError: a bad magic, an impossible count or size, an unsupported dtype or storage type.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MXNet params file {path} does not exist")
    reader = _Reader(path.read_bytes(), str(path))
    magic = reader.unpack("Q", "the list header")
    if magic != LIST_MAGIC:
        raise MxnetFormatError(f"{path}: starts with {magic:#x}, not MXNet's NDArray list magic {LIST_MAGIC:#x}; "
                               "this is not an MXNet .params file")
    reader.unpack("Q", "the reserved word")
    count = _count(reader, "the number of arrays", minimum_bytes=4)
    arrays = [_read_array(reader, i) for i in range(count)]
    names = _read_names(reader, count)
    if len(set(names)) != len(names):
        raise MxnetFormatError(f"{path}: the array names repeat; the file is damaged")
    return dict(zip(names, arrays))


def _count(reader: _Reader, what: str, minimum_bytes: int) -> int:
    """A uint64 count, refused when that many items of at least ``minimum_bytes`` cannot fit in what is left."""
    count = reader.unpack("Q", what)
    if count * minimum_bytes > reader.left:
        reader.offset -= 8
        raise reader.fail(f"{what} is {count}, more than the {reader.left - 8} remaining bytes can hold")
    return count


def _read_array(reader: _Reader, index: int) -> np.ndarray:
    start = reader.offset
    word = reader.unpack("I", f"array {index}'s header")
    version = ARRAY_MAGICS.get(word, 0)
    if version >= 2:
        storage = reader.unpack("i", f"array {index}'s storage type")
        if storage != 0:
            reader.offset = start
            raise reader.fail(f"array {index} has sparse storage type {storage} (only dense arrays are read)")
    ndim = word if version == 0 else reader.unpack("I", f"array {index}'s ndim")
    if ndim > MAX_NDIM:
        raise reader.fail(f"array {index} claims {ndim} dimensions")
    dim_format = "I" if version == 0 else "q"
    shape = tuple(reader.unpack(dim_format, f"array {index}'s shape") for _ in range(ndim))
    if any(d < 0 for d in shape):
        raise reader.fail(f"array {index} has an unknown (negative) dimension in its shape {shape}")
    if ndim == 0 or 0 in shape:
        return np.zeros(shape, dtype=np.float32)  # mxnet writes no context, dtype or data for an empty array
    reader.take(8, f"array {index}'s context")
    flag = reader.unpack("i", f"array {index}'s dtype")
    if flag not in DTYPES:
        reader.offset -= 4
        raise reader.fail(f"array {index} has dtype flag {flag}, not one of {sorted(DTYPES)}")
    dtype = np.dtype(DTYPES[flag]).newbyteorder("<")
    size = math.prod(shape) * dtype.itemsize
    data = reader.take(size, f"array {index}'s data {shape} {dtype.name}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(DTYPES[flag])


def _read_names(reader: _Reader, count: int) -> list[str]:
    listed = reader.unpack("Q", "the number of names")
    if listed != count:
        reader.offset -= 8
        raise reader.fail(f"the file lists {listed} names for {count} arrays")
    names = []
    for i in range(count):
        length = reader.unpack("Q", f"name {i}'s length")
        raw = reader.take(length, f"name {i}")
        try:
            names.append(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise reader.fail(f"name {i} is not UTF-8 ({err})") from err
    return names


def write_ndarray_file(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``{name: array}`` in MXNet's NDArray list format (v2 arrays, CPU context); for tests and fixtures."""
    flags = {np.dtype(v): k for k, v in DTYPES.items()}
    out = [struct.pack("<QQQ", LIST_MAGIC, 0, len(arrays))]
    for array in arrays.values():
        array = np.ascontiguousarray(array)
        out.append(struct.pack("<IiI", 0xF993FAC9, 0, array.ndim) + struct.pack(f"<{array.ndim}q", *array.shape))
        if array.size:
            out.append(struct.pack("<iii", 1, 0, flags[array.dtype]) + array.astype(array.dtype.newbyteorder("<"))
                       .tobytes())
    out.append(struct.pack("<Q", len(arrays)))
    for name in arrays:
        encoded = name.encode()
        out.append(struct.pack("<Q", len(encoded)) + encoded)
    Path(path).write_bytes(b"".join(out))


# ------------------------------------------------------------------------------------------------ symbol
@dataclass
class Node:
    """One node of the symbol graph: ``op`` (``"null"`` for a variable), ``name``, ``attrs`` (strings as
    written) and ``inputs`` as ``(node index, output index)``."""

    op: str
    name: str
    attrs: dict[str, str]
    inputs: list[tuple[int, int]]


@dataclass
class Symbol:
    """A parsed ``-symbol.json``: nodes in topological order and the ``(node, output)`` heads."""

    nodes: list[Node]
    heads: list[tuple[int, int]]
    path: str


def read_symbol(path: str | os.PathLike) -> Symbol:
    """Parse an MXNet ``-symbol.json`` (nnvm JSON: ``nodes``, ``arg_nodes``, ``heads``).

    Raises:
        MxnetFormatError: not JSON, or nodes/inputs/heads that do not form a graph in topological order.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MxnetFormatError(f"{path} is not an MXNet symbol file (not JSON: {err})") from err
    return parse_symbol(raw, str(path))


def parse_symbol(raw: Any, source: str = "the symbol") -> Symbol:
    """A :class:`Symbol` from the decoded JSON of a symbol file; checks that every input points backwards."""
    if not isinstance(raw, dict) or not isinstance(raw.get("nodes"), list) or "heads" not in raw:
        raise MxnetFormatError(f"{source}: an MXNet symbol has 'nodes' and 'heads'; this JSON has "
                               f"{sorted(raw) if isinstance(raw, dict) else type(raw).__name__}")
    nodes = []
    for index, entry in enumerate(raw["nodes"]):
        try:
            # the attribute dict is 'attrs' since mxnet 1.0, 'attr' or 'param' in older files
            attrs = entry.get("attrs") or entry.get("attr") or entry.get("param") or {}
            inputs = [(int(i[0]), int(i[1])) for i in entry.get("inputs", [])]
            node = Node(str(entry["op"]), str(entry["name"]), {str(k): str(v) for k, v in attrs.items()}, inputs)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
            raise MxnetFormatError(f"{source}: node {index} is malformed ({err!r})") from err
        if any(not 0 <= i < index for i, _ in inputs):
            raise MxnetFormatError(f"{source}: node {index} ({node.name}) has inputs {inputs} that are not earlier "
                                   "nodes; the graph must be in topological order")
        nodes.append(node)
    try:
        heads = [(int(h[0]), int(h[1])) for h in raw["heads"]]
    except (TypeError, ValueError, IndexError) as err:
        raise MxnetFormatError(f"{source}: 'heads' is malformed ({err!r})") from err
    if len(heads) != 1 or not 0 <= heads[0][0] < len(nodes):
        raise MxnetFormatError(f"{source}: expected one output head naming a node, got {heads}")
    return Symbol(nodes, heads, source)


def _tuple(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    if text is None:
        return default
    values = tuple(int(v) for v in re.findall(r"-?\d+", text))
    return values or default


def _bool(text: str | None, default: bool) -> bool:
    return default if text is None else text.strip().lower() in ("true", "1")


def _float(text: str | None, default: float) -> float:
    return default if text is None else float(text)


# ------------------------------------------------------------------------------------------------ operators
Tensors = list[torch.Tensor]
Operator = Callable[[dict[str, str], Tensors], torch.Tensor]


def _convolution(a: dict[str, str], x: Tensors) -> torch.Tensor:
    kernel = _tuple(a.get("kernel"), ())
    if len(kernel) != 2 or a.get("layout", "NCHW") not in ("NCHW", "None"):
        raise ValueError(f"only 2-D NCHW convolutions run here (kernel {kernel}, layout {a.get('layout')})")
    bias = None if _bool(a.get("no_bias"), False) else x[2]
    return F.conv2d(x[0], x[1], bias, _tuple(a.get("stride"), (1, 1)), _tuple(a.get("pad"), (0, 0)),
                    _tuple(a.get("dilate"), (1, 1)), int(a.get("num_group", 1)))


def _batch_norm(a: dict[str, str], x: Tensors) -> torch.Tensor:
    # Inference: always the moving statistics (use_global_stats only changes training); fix_gamma means the
    # stored gamma is ignored and 1 is used.
    data, gamma, beta, mean, var = x
    if int(a.get("axis", 1)) != 1:
        raise ValueError(f"BatchNorm over axis {a.get('axis')} is not supported (channels axis 1 only)")
    if _bool(a.get("fix_gamma"), True):
        gamma = torch.ones_like(gamma)
    shape = (1, -1) + (1,) * (data.ndim - 2)
    scale = gamma / torch.sqrt(var + _float(a.get("eps"), MXNET_BN_EPS))
    return (data - mean.view(shape)) * scale.view(shape) + beta.view(shape)


def _leaky_relu(a: dict[str, str], x: Tensors) -> torch.Tensor:
    kind = a.get("act_type", "leaky")
    data = x[0]
    if kind == "prelu":
        slope = x[1].view((1, -1) + (1,) * (data.ndim - 2)) if x[1].numel() > 1 else x[1]
        return torch.where(data >= 0, data, data * slope)
    slope = _float(a.get("slope"), 0.25)
    if kind == "leaky":
        return torch.where(data >= 0, data, data * slope)
    if kind == "rrelu":  # at inference the slope is the middle of [lower_bound, upper_bound]
        middle = (_float(a.get("lower_bound"), 0.125) + _float(a.get("upper_bound"), 0.334)) / 2
        return torch.where(data >= 0, data, data * middle)
    if kind == "elu":
        return torch.where(data >= 0, data, slope * torch.expm1(data))
    if kind == "selu":
        return F.selu(data)
    if kind == "gelu":
        return F.gelu(data)
    raise ValueError(f"LeakyReLU act_type {kind!r} is not supported (prelu, leaky, rrelu, elu, selu, gelu)")


def _activation(a: dict[str, str], x: Tensors) -> torch.Tensor:
    kinds = {"relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "softrelu": F.softplus,
             "softsign": F.softsign}
    kind = a.get("act_type", "relu")
    if kind not in kinds:
        raise ValueError(f"Activation act_type {kind!r} is not supported ({sorted(kinds)})")
    return kinds[kind](x[0])


def _pooling(a: dict[str, str], x: Tensors) -> torch.Tensor:
    kind, data = a.get("pool_type", "max"), x[0]
    if _bool(a.get("global_pool"), False):
        reduce = {"max": torch.amax, "avg": torch.mean, "sum": torch.sum}
        if kind not in reduce:
            raise ValueError(f"global Pooling pool_type {kind!r} is not supported")
        return reduce[kind](data, dim=(2, 3), keepdim=True)
    kernel = _tuple(a.get("kernel"), ())
    stride, pad = _tuple(a.get("stride"), (1, 1)), _tuple(a.get("pad"), (0, 0))
    ceil = a.get("pooling_convention", "valid") == "full"
    if kind == "max":
        return F.max_pool2d(data, kernel, stride, pad, ceil_mode=ceil)
    if kind in ("avg", "sum"):
        include = _bool(a.get("count_include_pad"), True)
        out = F.avg_pool2d(data, kernel, stride, pad, ceil_mode=ceil, count_include_pad=include)
        return out * math.prod(kernel) if kind == "sum" else out
    raise ValueError(f"Pooling pool_type {kind!r} is not supported (max, avg, sum)")


def _fully_connected(a: dict[str, str], x: Tensors) -> torch.Tensor:
    data = torch.flatten(x[0], 1) if _bool(a.get("flatten"), True) else x[0]
    bias = None if _bool(a.get("no_bias"), False) else x[2]
    return F.linear(data, x[1], bias)


def _scalar(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> Operator:
    return lambda a, x: fn(x[0], _float(a.get("scalar"), 0.0))


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Operator:
    return lambda a, x: fn(x[0], x[1])


def _identity(a: dict[str, str], x: Tensors) -> torch.Tensor:
    return x[0]


def _concat(a: dict[str, str], x: Tensors) -> torch.Tensor:
    return torch.cat(x, dim=int(a.get("dim", 1)))


def _l2_normalization(a: dict[str, str], x: Tensors) -> torch.Tensor:
    if a.get("mode", "instance") != "instance":
        raise ValueError(f"L2Normalization mode {a.get('mode')!r} is not supported (instance only)")
    data = torch.flatten(x[0], 1)
    return (data / torch.sqrt((data * data).sum(1, keepdim=True) + _float(a.get("eps"), 1e-10))).view_as(x[0])


_ADD, _SUB, _MUL = torch.add, torch.sub, torch.mul
#: every operator :class:`MxnetGraph` runs, by its MXNet name.
OPERATORS: dict[str, Operator] = {
    "Convolution": _convolution,
    "BatchNorm": _batch_norm,
    "LeakyReLU": _leaky_relu,
    "Activation": _activation,
    "Pooling": _pooling,
    "FullyConnected": _fully_connected,
    "Flatten": lambda a, x: torch.flatten(x[0], 1),
    "flatten": lambda a, x: torch.flatten(x[0], 1),
    "Dropout": _identity,
    "BlockGrad": _identity,
    "_copy": _identity,
    "identity": _identity,
    "Concat": _concat,
    "concat": _concat,
    "L2Normalization": _l2_normalization,
    **{name: _binary(_ADD) for name in ("elemwise_add", "_Plus", "_plus", "broadcast_add", "_add")},
    **{name: _binary(_SUB) for name in ("elemwise_sub", "_Minus", "_minus", "broadcast_sub", "_sub")},
    **{name: _binary(_MUL) for name in ("elemwise_mul", "_Mul", "_mul", "broadcast_mul")},
    **{name: _binary(torch.div) for name in ("elemwise_div", "_Div", "_div", "broadcast_div")},
    "_plus_scalar": _scalar(lambda t, s: t + s),
    "_minus_scalar": _scalar(lambda t, s: t - s),
    "_rminus_scalar": _scalar(lambda t, s: s - t),
    "_mul_scalar": _scalar(lambda t, s: t * s),
    "_div_scalar": _scalar(lambda t, s: t / s),
    "_rdiv_scalar": _scalar(lambda t, s: s / t),
}


# ------------------------------------------------------------------------------------------------ graph module
def _tensor_key(name: str) -> str:
    """A parameter name as a state-dict key (module attribute names may not contain dots)."""
    return name.replace(".", "__")


class MxnetGraph(nn.Module):
    """An MXNet symbol graph run in PyTorch: ``(B, 3, H, W) float -> (B, D)`` (the graph's single output).

    The input is what the graph's ``data`` variable receives (for insightface's zoo: raw 0..255 RGB pixels,
    the graph normalises).  The weights are buffers named after the MXNet arguments, dots replaced by ``__``;
    the graph itself is kept as the parsed :class:`Symbol` (``symbol_json`` returns it as JSON).

    Raises:
        MxnetFormatError: an operator outside :data:`OPERATORS` (all unsupported ones named), a variable with
            no weight in ``params`` (the first missing one named), or more than one non-weight input.
    """

    def __init__(self, symbol: Symbol, params: Mapping[str, np.ndarray | torch.Tensor], source: str = "") -> None:
        super().__init__()
        self.symbol, self.source = symbol, source or symbol.path
        unsupported = sorted({n.op for n in symbol.nodes if n.op != "null" and n.op not in OPERATORS})
        if unsupported:
            raise MxnetFormatError(f"{self.source}: the graph uses MXNet operators that marginface does not run: "
                                   f"{', '.join(unsupported)} (supported: {', '.join(sorted(OPERATORS))})")
        weights = {k.split(":", 1)[-1]: v for k, v in params.items()}
        self.input_index = self._bind(weights)
        self.embedding_size = 0

    def _bind(self, weights: Mapping[str, np.ndarray | torch.Tensor]) -> int:
        """Register every variable's weight as a buffer; returns the index of the one data input."""
        used = {i for n in self.symbol.nodes for i, _ in n.inputs} | {self.symbol.heads[0][0]}
        data_inputs = []
        for index, node in enumerate(self.symbol.nodes):
            if node.op != "null" or index not in used:
                continue
            # by MXNet name (a .params file) or by state-dict key (a converted safetensors file)
            weight = weights.get(node.name, weights.get(_tensor_key(node.name)))
            if weight is not None:
                tensor = weight.clone() if isinstance(weight, torch.Tensor) else torch.from_numpy(np.array(weight))
                self.register_buffer(_tensor_key(node.name), tensor)
            else:
                data_inputs.append(index)
        if len(data_inputs) != 1:
            names = [self.symbol.nodes[i].name for i in data_inputs]
            extra = [n for n in names if n != "data"] or names
            raise MxnetFormatError(f"{self.source}: the graph's variables {names} have no weights in the .params "
                                   f"file; only the input ('data') may be unbound - first missing: {extra[0]}")
        return data_inputs[0]

    def symbol_json(self) -> str:
        """The graph as nnvm JSON (nodes, arg_nodes, heads), enough for :func:`parse_symbol` to rebuild it."""
        nodes = [{"op": n.op, "name": n.name, "attrs": n.attrs, "inputs": [[i, o, 0] for i, o in n.inputs]}
                 for n in self.symbol.nodes]
        args = [i for i, n in enumerate(self.symbol.nodes) if n.op == "null"]
        return json.dumps({"nodes": nodes, "arg_nodes": args, "heads": [[h, o, 0] for h, o in self.symbol.heads]})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the head's output, with ``x`` fed to the graph's data variable."""
        values: list[torch.Tensor | None] = [None] * len(self.symbol.nodes)
        for index, node in enumerate(self.symbol.nodes):
            if node.op == "null":
                values[index] = x if index == self.input_index else getattr(self, _tensor_key(node.name), None)
                continue
            inputs = [values[i] for i, _ in node.inputs]
            try:
                values[index] = OPERATORS[node.op](node.attrs, inputs)  # type: ignore[arg-type]
            except (RuntimeError, ValueError, TypeError, IndexError) as err:
                shapes = [tuple(t.shape) if t is not None else None for t in inputs]
                raise ValueError(f"{self.source}: MXNet node {node.name!r} ({node.op}, attrs {node.attrs}) failed "
                                 f"on inputs {shapes}: {err}") from err
        return values[self.symbol.heads[0][0]]  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------ files
def mxnet_files(path: str | os.PathLike) -> tuple[Path, Path] | None:
    """``(params, symbol)`` for ``prefix-0000.params``, ``prefix-symbol.json`` or the bare ``prefix``; else None.

    For a symbol or a prefix, the params file is ``prefix-NNNN.params`` with the highest epoch present.
    """
    path = Path(path)
    name = path.name
    if name.endswith(".params"):
        prefix = path.with_name(re.sub(r"-\d+\.params$", "", name))
        return path, prefix.with_name(prefix.name + "-symbol.json")
    prefix = path.with_name(name.removesuffix("-symbol.json")) if name.endswith("-symbol.json") else path
    symbol = prefix.with_name(prefix.name + "-symbol.json")
    if not symbol.is_file():
        return None
    epochs = sorted(prefix.parent.glob(f"{glob_escape(prefix.name)}-[0-9][0-9][0-9][0-9].params"))
    if not epochs:
        raise FileNotFoundError(f"{symbol} has no weights beside it: expected {prefix}-0000.params (MXNet "
                                "saves prefix-EPOCH.params)")
    return epochs[-1], symbol


def glob_escape(text: str) -> str:
    """``text`` with glob's special characters bracketed, so a prefix like ``m[1]`` matches literally."""
    return re.sub(r"([\[\]*?])", r"[\1]", text)


def load_mxnet(path: str | os.PathLike) -> tuple[MxnetGraph, Path, Path]:
    """Read an MXNet model (``.params``, ``-symbol.json`` or the prefix) into an :class:`MxnetGraph`.

    Returns the graph (eval mode) and the two files read.

    Raises:
        FileNotFoundError: one of the pair is missing (the expected name is given).
        MxnetFormatError: a damaged file, unsupported operators, weights that do not match the graph.
    """
    files = mxnet_files(path)
    if files is None:
        raise FileNotFoundError(f"{path}: no MXNet symbol file {path}-symbol.json beside it")
    params_path, symbol_path = files
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"MXNet model file {file} does not exist (a model is prefix-symbol.json + "
                                    "prefix-0000.params, side by side)")
    graph = MxnetGraph(read_symbol(symbol_path), read_ndarray_file(params_path), source=str(params_path))
    graph.eval()
    return graph, params_path, symbol_path


def input_normalisation(symbol: Symbol) -> tuple[float, float, int]:
    """``(mean, std, last)`` for a graph that opens with ``(data - a) * b`` (or ``/ c``), the in-graph pixel
    normalisation of insightface's zoo: ``mean = a``, ``std = 1 / b``, and ``last`` the index of the node whose
    output is the normalised image (the data node itself, with mean 0 and std 1, when there is none)."""
    mean, std = 0.0, 1.0
    current = next(i for i, n in enumerate(symbol.nodes) if n.op == "null")
    for index, node in enumerate(symbol.nodes):
        if node.op == "null":
            continue
        if node.inputs != [(current, 0)]:
            break
        scalar = _float(node.attrs.get("scalar"), 0.0)
        if node.op == "_minus_scalar" and std == 1.0:
            mean += scalar
        elif node.op == "_plus_scalar" and std == 1.0:
            mean -= scalar
        elif node.op == "_mul_scalar" and scalar > 0:
            std /= scalar
        elif node.op == "_div_scalar" and scalar > 0:
            std *= scalar
        else:
            break
        current = index
    return mean, std, current


# ------------------------------------------------------------------------------------------------ onto ours
#: arcface_torch / insightface MobileFaceNet block layouts tried when mapping a graph: (scale, blocks).
MOBILEFACENET_LAYOUTS = ((1, (1, 4, 6, 2)), (2, (1, 4, 6, 2)), (4, (2, 8, 12, 4)))
_PARITY_TOLERANCE = 1e-4  # relative, float32: a right mapping differs by rounding (~1e-6), a wrong one by O(1)


@dataclass
class Layer:
    """One weighted layer of a graph in execution order: ``kind`` conv / bn / prelu / fc and its tensors."""

    kind: str
    tensors: list[torch.Tensor]
    eps: float = 0.0
    fix_gamma: bool = False


def graph_layers(graph: MxnetGraph, after: int) -> list[Layer] | None:
    """The weighted layers of ``graph`` after node ``after``, or None when it has an operator that our
    MobileFaceNet has no counterpart for (residual adds, dropout and flatten carry no weights and are skipped;
    whether they sit where ours do is checked numerically by :func:`mobilefacenet_from_graph`)."""
    layers = []
    for node in graph.symbol.nodes[after + 1 :]:
        names = [graph.symbol.nodes[i].name for i, _ in node.inputs[1:]]
        tensors = [getattr(graph, _tensor_key(name)) for name in names if hasattr(graph, _tensor_key(name))]
        if node.op == "Convolution" and _bool(node.attrs.get("no_bias"), False):
            layers.append(Layer("conv", tensors))
        elif node.op == "BatchNorm":
            layers.append(Layer("bn", tensors, _float(node.attrs.get("eps"), MXNET_BN_EPS),
                                _bool(node.attrs.get("fix_gamma"), True)))
        elif node.op == "LeakyReLU" and node.attrs.get("act_type") == "prelu":
            layers.append(Layer("prelu", tensors))
        elif node.op == "FullyConnected":
            layers.append(Layer("fc", tensors if not _bool(node.attrs.get("no_bias"), False) else tensors[:1]))
        elif node.op not in ("null", "elemwise_add", "_Plus", "_plus", "Dropout", "Flatten", "flatten"):
            return None
    return layers


def _our_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    kinds = (nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.PReLU, nn.Linear)
    return [(name, m) for name, m in model.named_modules() if isinstance(m, kinds) and name != "head.map_bn"]


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, nn.PReLU):
        return "prelu"
    return "fc" if isinstance(module, nn.Linear) else "bn"


def _fits(module: nn.Module, layer: Layer) -> bool:
    if _kind(module) != layer.kind:
        return False
    if layer.kind in ("conv", "fc"):
        return tuple(module.weight.shape) == tuple(layer.tensors[0].shape)
    if layer.kind == "prelu":
        return module.weight.numel() == layer.tensors[0].numel()
    return module.num_features == layer.tensors[0].numel()


@torch.no_grad()
def _assign(module: nn.Module, layer: Layer) -> None:
    """Copy ``layer``'s weights into ``module``; MXNet's BN eps is folded into the running variance."""
    if layer.kind in ("conv", "prelu"):
        module.weight.copy_(layer.tensors[0].reshape(module.weight.shape))
    elif layer.kind == "fc":
        module.weight.copy_(layer.tensors[0])
        module.bias.copy_(layer.tensors[1] if len(layer.tensors) > 1 else torch.zeros_like(module.bias))
    else:
        gamma, beta, mean, var = layer.tensors
        if module.weight is not None:
            module.weight.copy_(torch.ones_like(gamma) if layer.fix_gamma else gamma)
        module.bias.copy_(beta)
        module.running_mean.copy_(mean)
        # (x - m) / sqrt(v + eps_mx) == (x - m) / sqrt(v' + eps_ours) with v' = v + eps_mx - eps_ours
        module.running_var.copy_(var.double() + layer.eps - module.eps)


@torch.no_grad()
def set_identity_batchnorm(module: nn.modules.batchnorm._BatchNorm) -> None:
    """Make an eval-mode BatchNorm the identity: mean 0, var 1 - eps, scale 1, shift 0."""
    module.running_mean.zero_()
    module.running_var.fill_(1.0 - module.eps)
    module.weight.fill_(1.0)
    module.bias.zero_()


def mobilefacenet_from_graph(graph: MxnetGraph) -> tuple[nn.Module, dict[str, Any], tuple[float, float]] | None:
    """Our ``mobilefacenet`` holding ``graph``'s weights, its ``backbone_kwargs`` and the in-graph ``(mean, std)``,
    or None when the graph is not one of :data:`MOBILEFACENET_LAYOUTS` (then run it as an :class:`MxnetGraph`).

    Accepted only when the mapped model reproduces the graph on a random image (relative difference below
    1e-4 in float32; rounding gives ~1e-6, a wiring difference O(1)), so a graph with the right layers but
    other wiring (residuals elsewhere) is never mapped.
    """
    from marginface import backbones

    mean, std, last = input_normalisation(graph.symbol)
    layers = graph_layers(graph, last)
    if not layers or layers[0].kind != "conv" or layers[-1].kind != "bn" or layers[-2].kind != "fc":
        return None
    embedding_size, width = layers[-2].tensors[0].shape[0], layers[0].tensors[0].shape[0]
    for scale, blocks in MOBILEFACENET_LAYOUTS:
        if width != 64 * scale:
            continue
        kwargs = {"output": "E", "fix_gamma": layers[-1].fix_gamma, "scale": scale, "blocks": list(blocks)}
        model = backbones.create("mobilefacenet", embedding_size=int(embedding_size), **kwargs)
        ours = _our_layers(model)
        if len(ours) != len(layers) or not all(_fits(m, layer) for (_, m), layer in zip(ours, layers)):
            continue
        for (_, module), layer in zip(ours, layers):
            _assign(module, layer)
        set_identity_batchnorm(model.head.map_bn)
        model.eval()
        if _same_function(graph, model, mean, std):
            return model, kwargs, (mean, std)
    return None


@torch.no_grad()
def _same_function(graph: MxnetGraph, model: nn.Module, mean: float, std: float) -> bool:
    """Whether ``model((x - mean) / std)`` equals ``graph(x)`` (float32) on one random 0..255 image."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, 3, 112, 112, generator=generator) * 255
    expected, actual = graph(pixels), model((pixels - mean) / std)
    if expected.shape != actual.shape:
        return False
    scale = expected.abs().max().clamp_min(1e-12)
    return bool(((expected - actual).abs().max() / scale) < _PARITY_TOLERANCE)
