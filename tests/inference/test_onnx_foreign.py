"""ONNX files from other repositories: normalisation inside the graph detected, fixed batches handled."""

from __future__ import annotations

import numpy as np
import pytest

from marginface.inference.model import load_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

WEIGHT = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)


def _graph(path, batch: int | str, prefix: list[tuple[str, float]], reshape_batch: int | None = None) -> None:
    """(B, 3, 112, 112) -> elementwise prefix -> mean over H, W -> (B, 3) @ W (3, 4) -> (B, 4).

    ``prefix`` entries are (op, constant); constants alternate between initializers and Constant nodes.
    ``reshape_batch`` bakes a batch size into a Reshape after the pooling (an input with a symbolic batch that
    still only runs at that batch).
    """
    nodes, inits, current = [], [numpy_helper.from_array(WEIGHT, "W")], "x"
    for i, (op, value) in enumerate(prefix):
        name = f"c{i}"
        if i % 2:
            nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
                np.array(value, np.float32))))
        else:
            inits.append(numpy_helper.from_array(np.array(value, np.float32), name))
        nodes.append(helper.make_node(op, [current, name], [f"n{i}"], name=f"/{op}_{i}"))
        current = f"n{i}"
    nodes.append(helper.make_node("ReduceMean", [current], ["pooled"], axes=[2, 3], keepdims=0))
    current = "pooled"
    if reshape_batch is not None:
        inits.append(numpy_helper.from_array(np.array([reshape_batch, -1], np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", [current, "shape"], ["flat"]))
        current = "flat"
    nodes.append(helper.make_node("MatMul", [current, "W"], ["emb"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 112, 112])],
                              [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [batch, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _reference(pixels: np.ndarray, mean: float, std: float) -> np.ndarray:
    return ((pixels.astype(np.float64) - mean) / std).mean(axis=(2, 3)) @ WEIGHT.astype(np.float64)


PIXELS = np.random.default_rng(1).uniform(0, 255, (8, 3, 112, 112)).astype(np.float32)


@pytest.mark.parametrize(("prefix", "mean", "std"), [
    ([("Div", 255.0), ("Sub", 0.5), ("Div", 0.5)], 127.5, 127.5),   # a PyTorch export's (x / 255 - 0.5) / 0.5
    ([("Sub", 127.5), ("Mul", 0.0078125)], 127.5, 128.0),           # an mxnet conversion's (x - 127.5) * 1/128
])
def test_normalisation_in_the_graph_is_detected(tmp_path, prefix, mean, std):
    _graph(tmp_path / "m.onnx", "b", prefix)
    loaded = load_model(tmp_path / "m.onnx")
    assert loaded.card.input.mean == [0.0] * 3 and loaded.card.input.std == [1.0] * 3
    assert f"(x - {mean:g}) / {std:g}" in loaded.card.source
    np.testing.assert_allclose(loaded.forward(PIXELS), _reference(PIXELS, mean, std), rtol=1e-4, atol=1e-4)


def test_no_normalisation_gets_insightfaces_contract(tmp_path):
    _graph(tmp_path / "m.onnx", "b", [])
    loaded = load_model(tmp_path / "m.onnx")
    assert loaded.card.input.mean == [127.5] * 3 and loaded.card.input.std == [127.5] * 3
    np.testing.assert_allclose(loaded.forward(PIXELS), _reference(PIXELS, 127.5, 127.5), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch", [1, 3])
def test_fixed_input_batch_runs_in_chunks(tmp_path, batch):
    _graph(tmp_path / "fixed.onnx", batch, [("Sub", 127.5), ("Mul", 0.0078125)])
    loaded = load_model(tmp_path / "fixed.onnx")
    for count in (1, 8):  # 8 is not a multiple of 3: the last chunk is padded
        np.testing.assert_allclose(loaded.forward(PIXELS[:count]), _reference(PIXELS[:count], 127.5, 128.0),
                                   rtol=1e-4, atol=1e-4)


def test_batch_fixed_inside_the_graph_falls_back_to_one_image(tmp_path):
    _graph(tmp_path / "inner.onnx", "b", [("Sub", 127.5), ("Mul", 0.0078125)], reshape_batch=1)
    loaded = load_model(tmp_path / "inner.onnx")
    np.testing.assert_allclose(loaded.forward(PIXELS), _reference(PIXELS, 127.5, 128.0), rtol=1e-4, atol=1e-4)


def test_onnxruntime_failure_is_a_named_value_error(tmp_path):
    _graph(tmp_path / "inner.onnx", "b", [], reshape_batch=2)  # cannot run one image either
    loaded = load_model(tmp_path / "inner.onnx")
    with pytest.raises(ValueError, match=r"onnxruntime could not run .*inner.onnx on an input of shape \(1, 3, 112"):
        loaded.forward(PIXELS[:3])


@pytest.mark.slow
def test_shared_onnx_matches_the_pth_loader(shared_models, real_aligned_faces):
    """The shared ONNX (normalisation in-graph) through load_model vs the .pth through our key map: cos >= 0.9999."""
    folder = shared_models / "bubbliiiing_mobilefacenet"
    graph = load_model(folder / "arcface_mobilefacenet_rgb255.onnx")
    assert graph.card.input.mean == [0.0] * 3 and graph.card.input.std == [1.0] * 3
    assert "(x - 127.5) / 127.5" in graph.card.source
    a = graph.embed_pixels(real_aligned_faces, flip=False)
    b = load_model(folder / "arcface_mobilefacenet.pth").embed_pixels(real_aligned_faces, flip=False)
    assert (a * b).sum(1).min() >= 0.9999
