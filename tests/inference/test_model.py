import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from marginface import backbones
from marginface.inference import ModelCard, load_model, read_card, tensors_sha256, write_card
from marginface.inference.card import InputContract


def _save(tmp_path, card=True, name="mobilefacenet", d=32):
    torch.manual_seed(0)
    model = backbones.create(name, embedding_size=d).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "m.safetensors"
    meta = None
    if card:
        meta = ModelCard(backbone=name, embedding_size=d, weights_sha256=tensors_sha256(state)).metadata()
    save_file({f"backbone.{k}": v for k, v in state.items()}, str(path), metadata=meta)
    return model, path


def test_load_with_card_matches_torch(tmp_path):
    model, path = _save(tmp_path)
    loaded = load_model(path)
    assert loaded.card.backbone == "mobilefacenet" and loaded.card.embedding_size == 32
    x = torch.rand(2, 3, 112, 112) * 255
    with torch.no_grad():
        ref = model((x - 127.5) / 127.5).numpy()
    np.testing.assert_allclose(loaded.forward(x), ref, rtol=1e-4, atol=1e-5)
    emb = loaded.embed_pixels(x)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_legacy_file_needs_description(tmp_path):
    _, path = _save(tmp_path, card=False)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no model card.*config.json"):
        load_model(path)
    assert load_model(path, backbone="mobilefacenet", embedding_size=32).card.weights_sha256


def test_card_disagreeing_with_weights(tmp_path):
    _, path = _save(tmp_path)
    card = read_card(path)
    card.weights_sha256 = "0" * 64
    write_card(path, card)
    with pytest.raises(ValueError, match="disagrees with its weights"):
        load_model(path)
    card.weights_sha256, card.embedding_size = "", 64
    write_card(path, card)
    with pytest.raises(ValueError, match="disagrees with its weights"):
        load_model(path)


@pytest.mark.parametrize("suffix", [".safetensors", ".onnx", ".pth"])
def test_not_a_model(tmp_path, suffix):
    path = tmp_path / f"x{suffix}"
    path.write_bytes(b"this is not a model at all")
    with pytest.raises(ValueError, match="not a"):
        load_model(path)
    with pytest.raises(ValueError, match="unknown model format"):
        (tmp_path / "x.txt").write_text("x")
        load_model(tmp_path / "x.txt")


def test_insightface_pth_roundtrip(tmp_path):
    from marginface.backbones.weights import INSIGHTFACE_HEAD_PREFIXES

    torch.manual_seed(1)
    model = backbones.create("iresnet18", embedding_size=64, output="E").eval()
    theirs = {}
    for key, value in model.state_dict().items():
        for their_prefix, our_prefix in INSIGHTFACE_HEAD_PREFIXES.items():
            if key.startswith(our_prefix):
                key = their_prefix + key.removeprefix(our_prefix)
        theirs[key] = value
    theirs["features.weight"] = torch.ones(64)
    torch.save(theirs, tmp_path / "backbone.pth")
    loaded = load_model(tmp_path / "backbone.pth")
    assert loaded.card.backbone == "iresnet18" and loaded.card.embedding_size == 64
    assert loaded.card.input.channel_order == "RGB"
    x = torch.rand(1, 3, 112, 112) * 255
    with torch.no_grad():
        np.testing.assert_allclose(loaded.forward(x), model(x / 127.5 - 1).numpy(), rtol=1e-4, atol=1e-4)


def test_onnx_without_card_uses_insightface_contract(tmp_path):
    torch.manual_seed(2)
    model = backbones.create("mobilefacenet", embedding_size=16).eval()
    path = tmp_path / "w.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, 112, 112), str(path), input_names=["input.1"],
                      dynamic_axes={"input.1": {0: "b"}}, dynamo=False)
    loaded = load_model(path)
    assert loaded.card.source == "insightface-onnx" and loaded.card.embedding_size == 16
    assert loaded.card.input.mean == [127.5] * 3 and loaded.card.input.channel_order == "RGB"
    x = torch.rand(3, 3, 112, 112) * 255
    with torch.no_grad():
        ref = model(x / 127.5 - 1).numpy()
    a, b = loaded.forward(x), ref
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.9999
    card = ModelCard(backbone="mobilefacenet", embedding_size=16, input=InputContract(channel_order="BGR"))
    write_card(path, card)
    assert load_model(path).card.input.channel_order == "BGR"
