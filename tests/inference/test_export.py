import numpy as np
import onnx
import pytest
from PIL import Image

from marginface.errors import UserError
from marginface.inference import export as ex
from marginface.inference import load_model, read_card
from tests.inference.helpers import save_tiny

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    model = save_tiny(root / "m.safetensors", threshold=0.3, flip=False)
    faces = root / "faces" / "x"
    faces.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(8):  # smooth "faces": low-frequency patterns, not white noise
        small = rng.integers(0, 256, (7, 7, 3), dtype=np.uint8)
        Image.fromarray(small).resize((112, 112), Image.BILINEAR).save(faces / f"{i}.png")
    report = ex.export_onnx(model, root / "m.onnx")
    return model, root, report


def test_fp32_parity_dynamic_batch_and_card(exported):
    model, root, report = exported
    assert report.exporter == "dynamo" and report.parity_min_cosine >= 0.9999
    graph = onnx.load(str(root / "m.onnx"))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    card, source = read_card(root / "m.onnx"), read_card(model)
    assert card.precision == "fp32" and card.weights_sha256 == source.weights_sha256
    assert card.compatibility_key == source.compatibility_key and card.threshold == 0.3
    torch_model, onnx_model = load_model(model), load_model(root / "m.onnx")
    for batch in (1, 2):
        x = np.random.default_rng(batch).uniform(0, 255, (batch, 3, 112, 112)).astype(np.float32)
        a, b = torch_model.embed_pixels(x), onnx_model.embed_pixels(x)
        assert np.sum(a * b, axis=1).min() >= 0.9999


def test_fp16_and_int8(exported, tmp_path):
    model, root, _ = exported
    loaded = load_model(model)
    faces = ex._aligned_faces(root / "faces", 112, 8)
    ex._to_fp16(root / "m.onnx", tmp_path / "h.onnx")
    ex._write_with_card(tmp_path / "h.onnx", tmp_path / "h2.onnx", loaded.card, "fp16", str(model))
    half = load_model(tmp_path / "h2.onnx")
    assert half.card.precision == "fp16" and half.card.threshold is None
    assert half.card.compatibility_key != loaded.card.compatibility_key
    cos = np.sum(loaded.embed_pixels(faces) * half.embed_pixels(faces), axis=1)
    assert cos.min() > 0.999
    ex._quantize_int8(root / "m.onnx", tmp_path / "q.onnx", loaded.normalise_input(
        __import__("torch").from_numpy(faces)).numpy(), str(tmp_path))
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    ex._write_with_card(tmp_path / "q.onnx", tmp_path / "q2.onnx", loaded.card, "int8", str(model))
    ref, q = loaded.embed_pixels(faces), load_model(tmp_path / "q2.onnx").embed_pixels(faces)
    # random-init weights lose much more to INT8 than trained ones (docs/inference.md has both), so check
    # only that each INT8 embedding is still nearest to its own face's fp32 embedding
    assert (np.argmax(q @ ref.T, axis=1) == np.arange(len(faces))).all()


def test_bad_export_requests(exported, tmp_path):
    model, root, _ = exported
    with pytest.raises(UserError, match="choose one"):
        ex.export_onnx(model, tmp_path / "x.onnx", fp16=True, int8=True)
    with pytest.raises(UserError, match="`calibration_images=DIR`"):
        ex.export_onnx(model, tmp_path / "x.onnx", int8=True)
    with pytest.raises(UserError, match="already an ONNX"):
        ex.export_onnx(root / "m.onnx", tmp_path / "x.onnx")
    Image.new("RGB", (200, 150)).save(tmp_path / "big.png")
    with pytest.raises(UserError, match="big.png is 200x150.*aligned 112x112"):
        ex._aligned_faces(tmp_path, 112, 10)


def test_torchscript_fallback_when_dynamo_fails(exported, tmp_path, monkeypatch):
    import torch

    model, _, _ = exported
    real = torch.onnx.export

    def dynamo_breaks(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("simulated torch.export failure")
        return real(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_breaks)
    report = ex.export_onnx(model, tmp_path / "ts.onnx")
    assert report.exporter.startswith("torchscript (dynamo failed: RuntimeError: simulated")
    assert report.parity_min_cosine >= 0.9999
    x = np.random.default_rng(0).uniform(0, 255, (3, 3, 112, 112)).astype(np.float32)
    assert load_model(tmp_path / "ts.onnx").forward(x).shape == (3, 32)  # batch stays dynamic


def test_int8_export_from_the_command_line_is_quiet(exported, tmp_path, capfd, caplog):
    """It printed 4 torchvision warnings, the calibrator's progress prints and "WARNING:root:Axis 1 is out-of-range
    for weight 'head.map_bn.weight'" (BatchNormalization's (C,) scale quantized along a missing axis 1)."""
    from marginface.cli import main

    model, root, _ = exported
    out = tmp_path / "q.onnx"
    assert main(["export", str(model), "--onnx", str(out), "--int8", "--calibration-images", str(root / "faces")]) == 0
    captured = capfd.readouterr()
    assert captured.out.splitlines()[0].startswith(f"wrote {out} (int8, exporter dynamo)")
    assert len(captured.out.splitlines()) == 1 and "torchvision" not in captured.err
    assert "out-of-range" not in caplog.text and "out-of-range" not in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx"]  # no .tmp, no temporary folder
    graph = onnx.load(str(out)).graph
    scales = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    bn = [n for n in graph.node if n.op_type == "DequantizeLinear" and "map_bn.weight" in n.input[0]]
    assert bn and scales[bn[0].input[1]].size > 1  # one scale per channel (axis 0), not one per tensor
