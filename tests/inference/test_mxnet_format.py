"""MXNet model zoo without mxnet: the NDArray .params reader, the symbol graph runner, the mapping onto our
mobilefacenet, load_model / convert - against a float64 numpy evaluation of the same graph written here."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from marginface.inference.model import convert_model, load_model
from marginface.inference.mxnet_format import (
    MxnetFormatError,
    MxnetGraph,
    load_mxnet,
    parse_symbol,
    read_ndarray_file,
    write_ndarray_file,
)


# ------------------------------------------------------------------------------------------ reference
def _reference_params(path: Path) -> dict[str, np.ndarray]:
    """A second, minimal reader of v2 NDArray files (dense float32 only), written from the format."""
    data = path.read_bytes()
    offset = 24
    count = struct.unpack_from("<Q", data, 16)[0]
    arrays = []
    for _ in range(count):
        magic, _stype, ndim = struct.unpack_from("<IiI", data, offset)
        assert magic == 0xF993FAC9
        shape = struct.unpack_from(f"<{ndim}q", data, offset + 12)
        offset += 12 + 8 * ndim + 12  # shape, then context (2 x int32) and the dtype flag
        size = int(np.prod(shape))
        arrays.append(np.frombuffer(data, "<f4", size, offset).reshape(shape).astype(np.float64))
        offset += 4 * size
    offset += 8
    names = []
    for _ in range(count):
        length = struct.unpack_from("<Q", data, offset)[0]
        names.append(data[offset + 8 : offset + 8 + length].decode().split(":", 1)[1])
        offset += 8 + length
    return dict(zip(names, arrays))


def _conv(x: np.ndarray, w: np.ndarray, stride: int, pad: int, groups: int) -> np.ndarray:
    """Grouped 2-D convolution as a sum over kernel offsets of per-group channel contractions (float64)."""
    batch, channels, height, width = x.shape
    out_channels, _, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))).reshape(batch, groups, channels // groups,
                                                                    height + 2 * pad, width + 2 * pad)
    w = w.reshape(groups, out_channels // groups, channels // groups, kh, kw)
    oh, ow = (height + 2 * pad - kh) // stride + 1, (width + 2 * pad - kw) // stride + 1
    out = np.zeros((batch, groups, out_channels // groups, oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
            out += np.einsum("bgchw,goc->bgohw", patch, w[:, :, :, i, j])
    return out.reshape(batch, out_channels, oh, ow)


def _first_int(text: str) -> int:
    return int(text.strip("()").split(",")[0])


def reference_forward(symbol_path: Path, params_path: Path, pixels: np.ndarray) -> np.ndarray:
    """Evaluate an MXNet symbol in float64 numpy, with MXNet's documented defaults spelled out here."""
    graph = json.loads(symbol_path.read_text())
    params = _reference_params(params_path)
    values: list = []
    for node in graph["nodes"]:
        a = node.get("attrs", {})
        ins = [values[i] for i, _, _ in node["inputs"]]
        op = node["op"]
        if op == "null":
            values.append(params.get(node["name"], pixels.astype(np.float64)))
        elif op == "_minus_scalar":
            values.append(ins[0] - float(a["scalar"]))
        elif op == "_mul_scalar":
            values.append(ins[0] * float(a["scalar"]))
        elif op == "Convolution":
            out = _conv(ins[0], ins[1], _first_int(a.get("stride", "(1,1)")), _first_int(a.get("pad", "(0,0)")),
                        int(a.get("num_group", 1)))
            values.append(out if a.get("no_bias") == "True" else out + ins[2][None, :, None, None])
        elif op == "BatchNorm":
            gamma = np.ones_like(ins[1]) if a.get("fix_gamma", "True") == "True" else ins[1]  # mxnet default True
            eps = float(a.get("eps", 1e-3))  # mxnet's default eps
            shape = (1, -1) + (1,) * (ins[0].ndim - 2)
            values.append((ins[0] - ins[3].reshape(shape)) / np.sqrt(ins[4].reshape(shape) + eps)
                          * gamma.reshape(shape) + ins[2].reshape(shape))
        elif op == "LeakyReLU" and a.get("act_type") == "prelu":
            slope = ins[1].reshape((1, -1) + (1,) * (ins[0].ndim - 2))
            values.append(np.maximum(ins[0], 0) + slope * np.minimum(ins[0], 0))
        elif op == "LeakyReLU":
            values.append(np.maximum(ins[0], 0) + float(a.get("slope", 0.25)) * np.minimum(ins[0], 0))
        elif op == "elemwise_add":
            values.append(ins[0] + ins[1])
        elif op == "Pooling":
            k, s = _first_int(a["kernel"]), _first_int(a.get("stride", "(1,1)"))
            b, c, h, w = ins[0].shape
            oh, ow = (h - k) // s + 1, (w - k) // s + 1
            windows = np.stack([ins[0][:, :, i : i + s * oh : s, j : j + s * ow : s]
                                for i in range(k) for j in range(k)])
            values.append(windows.max(0) if a.get("pool_type", "max") == "max" else windows.mean(0))
        elif op in ("Flatten", "Dropout"):
            values.append(ins[0].reshape(len(ins[0]), -1) if op == "Flatten" else ins[0])
        elif op == "FullyConnected":
            out = ins[0].reshape(len(ins[0]), -1) @ ins[1].T
            values.append(out + ins[2] if a.get("no_bias") != "True" else out)
        else:
            raise AssertionError(f"reference has no {op}")
    return values[graph["heads"][0][0]]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


# ------------------------------------------------------------------------------------------ tiny fixture
def _node(op: str, name: str, inputs: list[int], **attrs: str) -> dict:
    return {"op": op, "name": name, "attrs": attrs, "inputs": [[i, 0, 0] for i in inputs]}


def write_tiny_model(folder: Path, seed: int = 0, embedding: int = 5) -> Path:
    """A small graph using every operator kind the zoo needs, as prefix-symbol.json + prefix-0000.params."""
    rng = np.random.default_rng(seed)
    nodes, params = [_node("null", "data", [])], {}

    def var(name: str, shape: tuple[int, ...], positive: bool = False) -> int:
        values = rng.uniform(0.5, 1.5, shape) if positive else rng.normal(0, 0.5, shape)
        params[("aux:" if "moving" in name else "arg:") + name] = values.astype(np.float32)
        nodes.append(_node("null", name, []))
        return len(nodes) - 1

    def op(kind: str, name: str, inputs: list[int], **attrs: str) -> int:
        nodes.append(_node(kind, name, inputs, **attrs))
        return len(nodes) - 1

    def bn(name: str, x: int, channels: int, **attrs: str) -> int:
        ids = [var(f"{name}_gamma", (channels,), True), var(f"{name}_beta", (channels,)),
               var(f"{name}_moving_mean", (channels,)), var(f"{name}_moving_var", (channels,), True)]
        return op("BatchNorm", name, [x, *ids], **attrs)

    x = op("_minus_scalar", "_minusscalar0", [0], scalar="127.5")
    x = op("_mul_scalar", "_mulscalar0", [x], scalar="0.0078125")
    x = op("Convolution", "conv1", [x, var("conv1_weight", (4, 3, 3, 3)), var("conv1_bias", (4,))],
           kernel="(3, 3)", stride="(2, 2)", pad="(1, 1)", num_filter="4", num_group="1")
    x = bn("bn1", x, 4)  # no eps, no fix_gamma: mxnet's defaults 1e-3 and True (the random gamma is ignored)
    x = op("LeakyReLU", "relu1", [x, var("relu1_gamma", (4,))], act_type="prelu")
    y = op("Convolution", "conv2", [x, var("conv2_weight", (4, 2, 3, 3))], kernel="(3, 3)", pad="(1, 1)",
           num_filter="4", num_group="2", no_bias="True")
    y = bn("bn2", y, 4, eps="2e-05", fix_gamma="False")
    y = op("LeakyReLU", "leaky2", [y], act_type="leaky", slope="0.1")
    x = op("elemwise_add", "plus0", [x, y])
    x = op("Pooling", "pool", [x], kernel="(2, 2)", stride="(2, 2)", pool_type="max")
    x = op("Dropout", "drop", [x], p="0.4")
    x = op("Flatten", "flat", [x])
    x = op("FullyConnected", "fc1", [x, var("fc1_weight", (embedding, 4 * 28 * 28)), var("fc1_bias", (embedding,))],
           num_hidden=str(embedding))
    graph = {"nodes": nodes, "arg_nodes": [i for i, n in enumerate(nodes) if n["op"] == "null"],
             "heads": [[x, 0, 0]], "attrs": {"mxnet_version": ["int", 10600]}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny-symbol.json").write_text(json.dumps(graph))
    write_ndarray_file(folder / "tiny-0000.params", params)
    return folder / "tiny"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("mxnet"))


def _pixels(count: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (count, 3, 112, 112)).astype(np.float32)


def test_params_round_trip_every_dtype(tmp_path):
    arrays = {"arg:a": np.arange(6, dtype=np.float32).reshape(2, 3), "aux:b": np.array([1.5, -2.0]),
              "arg:c": np.array([[1, 2]], dtype=np.int64), "arg:h": np.array([0.5], dtype=np.float16),
              "arg:empty": np.zeros((0,), dtype=np.float32)}
    write_ndarray_file(tmp_path / "x.params", arrays)
    read = read_ndarray_file(tmp_path / "x.params")
    assert list(read) == list(arrays)
    for name, array in arrays.items():
        assert read[name].dtype == array.dtype and np.array_equal(read[name], array)


def test_legacy_v1_array_layout(tmp_path):
    """The pre-magic layout: uint32 ndim, uint32 dims, context, dtype flag, data."""
    body = struct.pack("<II", 1, 3) + struct.pack("<iii", 1, 0, 0) + np.array([1, 2, 3], "<f4").tobytes()
    name = b"arg:w"
    blob = struct.pack("<QQQ", 0x112, 0, 1) + body + struct.pack("<QQ", 1, len(name)) + name
    (tmp_path / "old.params").write_bytes(blob)
    assert np.array_equal(read_ndarray_file(tmp_path / "old.params")["arg:w"], [1, 2, 3])


def _corrupt(tmp_path: Path, blob: bytes) -> Path:
    path = tmp_path / "bad.params"
    path.write_bytes(blob)
    return path


def test_damaged_params_name_the_file_and_offset(tmp_path, tiny):
    good = (tiny.parent / "tiny-0000.params").read_bytes()
    truncated = _corrupt(tmp_path, good[: len(good) // 2])
    with pytest.raises(MxnetFormatError, match=r"bad\.params: .*data.* at byte offset \d+ \(file size"):
        read_ndarray_file(truncated)
    with pytest.raises(MxnetFormatError, match="not MXNet's NDArray list magic"):
        read_ndarray_file(_corrupt(tmp_path, b"PK\x03\x04" + good[4:]))
    # a count of 2^40 arrays in a small file is refused before anything is allocated
    with pytest.raises(MxnetFormatError, match="number of arrays is 1099511627776, more than"):
        read_ndarray_file(_corrupt(tmp_path, struct.pack("<QQQ", 0x112, 0, 2**40) + good[24:]))
    huge = struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<IiI", 0xF993FAC9, 0, 2) + struct.pack("<qq", 2**31, 2**31)
    with pytest.raises(MxnetFormatError, match=r"needs \d+ bytes but only \d+ remain"):
        read_ndarray_file(_corrupt(tmp_path, huge + struct.pack("<iii", 1, 0, 0)))
    sparse = struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<Ii", 0xF993FAC9, 1)
    with pytest.raises(MxnetFormatError, match="sparse storage type 1 .* at byte offset 24"):
        read_ndarray_file(_corrupt(tmp_path, sparse))
    dtype = struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<IiIq", 0xF993FAC9, 0, 1, 1) + struct.pack("<iii", 1, 0, 9)
    with pytest.raises(MxnetFormatError, match="dtype flag 9"):
        read_ndarray_file(_corrupt(tmp_path, dtype))


def test_graph_matches_float64_reference(tiny):
    graph, params, symbol = load_mxnet(tiny)
    pixels = _pixels(3)
    with torch.no_grad():
        ours = graph(torch.from_numpy(pixels)).numpy()
    expected = reference_forward(symbol, params, pixels)
    assert ours.shape == (3, 5)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_bn_defaults_matter(tiny):
    """The reference with torch's eps (1e-5) or a used gamma would differ: the fixture exercises both defaults."""
    graph, params, symbol = load_mxnet(tiny)
    node = next(n for n in graph.symbol.nodes if n.name == "bn1")
    pixels = torch.from_numpy(_pixels(2))
    with torch.no_grad():
        default = graph(pixels)
        node.attrs.update(eps="1e-5", fix_gamma="False")
        changed = graph(pixels)
    assert (default - changed).abs().max() > 1e-2 * default.abs().max()


@pytest.mark.parametrize("name", ["tiny", "tiny-symbol.json", "tiny-0000.params"])
def test_load_model_accepts_prefix_symbol_or_params(tiny, name):
    loaded = load_model(tiny.parent / name)
    graph, params, symbol = load_mxnet(tiny)
    assert loaded.card.backbone == "mxnet_graph" and loaded.card.embedding_size == 5
    assert loaded.card.input.mean == [0.0] * 3 and loaded.card.input.std == [1.0] * 3  # the graph normalises
    pixels = _pixels(2)
    np.testing.assert_allclose(loaded.forward(pixels), reference_forward(symbol, params, pixels), rtol=1e-4,
                               atol=1e-4)


def test_convert_round_trip_of_a_graph(tiny, tmp_path):
    out = tmp_path / "tiny.safetensors"
    card = convert_model(tiny, out)
    back = load_model(out)
    assert back.card.backbone == "mxnet_graph" and back.card.weights_sha256 == card.weights_sha256
    pixels = _pixels(2)
    np.testing.assert_array_equal(back.forward(pixels), load_model(tiny).forward(pixels))


def test_unsupported_operators_are_named(tmp_path, tiny):
    raw = json.loads((tiny.parent / "tiny-symbol.json").read_text())
    raw["nodes"][-1]["op"] = "SoftmaxActivation"
    raw["nodes"][-2]["op"] = "Crop"
    with pytest.raises(MxnetFormatError, match="operators that marginface does not run: Crop, SoftmaxActivation"):
        MxnetGraph(parse_symbol(raw, "x"), read_ndarray_file(tiny.parent / "tiny-0000.params"))


def test_missing_weight_and_missing_pair_are_named(tmp_path, tiny):
    params = read_ndarray_file(tiny.parent / "tiny-0000.params")
    del params["arg:conv2_weight"]
    raw = json.loads((tiny.parent / "tiny-symbol.json").read_text())
    with pytest.raises(MxnetFormatError, match="first missing: conv2_weight"):
        MxnetGraph(parse_symbol(raw, "x"), params)
    (tmp_path / "lonely-symbol.json").write_text(json.dumps(raw))
    with pytest.raises(FileNotFoundError, match="lonely-0000.params"):
        load_model(tmp_path / "lonely")
    with pytest.raises(MxnetFormatError, match="not an MXNet symbol file"):
        (tmp_path / "junk-symbol.json").write_text("{nope")
        write_ndarray_file(tmp_path / "junk-0000.params", {})
        load_model(tmp_path / "junk")


# ------------------------------------------------------------------------------------------ the real model
@pytest.fixture(scope="module")
def y1(shared_models) -> Path:
    return shared_models / "insightface_mobilefacenet_y1" / "model"


@pytest.mark.slow
def test_insightface_y1_maps_onto_our_mobilefacenet(y1, real_aligned_faces, tmp_path):
    """Parity on 6 real aligned LFW faces: load_model (our mobilefacenet) vs the float64 numpy graph."""
    loaded = load_model(y1)
    card = loaded.card
    assert card.backbone == "mobilefacenet" and card.embedding_size == 128
    assert card.input.mean == [127.5] * 3 and card.input.std == [128.0] * 3 and card.input.channel_order == "RGB"
    faces = real_aligned_faces[:6]
    expected = reference_forward(Path(f"{y1}-symbol.json"), Path(f"{y1}-0000.params"), faces)
    cosines = _cosines(loaded.forward(faces), expected)
    assert cosines.min() >= 0.9999, cosines
    # the graph runner agrees too, and so does the converted file
    graph, _, _ = load_mxnet(y1)
    with torch.no_grad():
        assert _cosines(graph(torch.from_numpy(faces)).numpy(), expected).min() >= 0.9999
    convert_model(f"{y1}-0000.params", tmp_path / "y1.safetensors")
    np.testing.assert_array_equal(load_model(tmp_path / "y1.safetensors").forward(faces), loaded.forward(faces))


def test_eval_adapter_applies_the_graphs_contract(tiny):
    """marginface eval feeds (x - 127.5) / 127.5; the adapter turns it back into the pixels the graph expects."""
    from marginface.evaluation.embed import load_backbone

    model = load_backbone(None, tiny.parent / "tiny-0000.params")
    pixels = _pixels(2)
    with torch.no_grad():
        out = model(torch.from_numpy((pixels - 127.5) / 127.5)).numpy()
    np.testing.assert_allclose(out, load_model(tiny).forward(pixels), rtol=1e-4, atol=1e-4)
