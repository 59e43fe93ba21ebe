"""``.pth`` state dicts of other repositories: arcface_torch MobileFaceNet (mbf, mbf_large) and ViT, the CASIA
MobileFaceNet layout, and clear errors for anything else.

The fixtures are our own backbones with random weights (and BatchNorm statistics), renamed here to the other
layouts from their published module structure; loading them back must reproduce our model's output exactly."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from marginface import backbones
from marginface.backbones.foreign import set_identity_map_bn
from marginface.inference.model import load_model

PARTS = {"expand": 0, "depthwise": 1, "project": 2}


def _randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BN statistics/affines and PReLU slopes (a fresh model's are trivial), eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                if module.weight is not None:
                    module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            elif isinstance(module, torch.nn.PReLU):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) * 0.5)
    return model.eval()


def _mobilefacenet(scale: int, blocks: tuple[int, ...], size: int = 64) -> torch.nn.Module:
    torch.manual_seed(0)
    model = _randomised(backbones.create("mobilefacenet", embedding_size=size, fix_gamma=False, scale=scale,
                                         blocks=list(blocks)))
    set_identity_map_bn(model)  # the other layouts have no BN over the 7x7 map
    with torch.no_grad():
        model.head.fc.bias.zero_()  # nor an FC bias
    return model


def to_arcface_torch_mbf(model: torch.nn.Module, blocks: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Our mobilefacenet's state under arcface_torch's mobilefacenet.py names (layers.0..7, conv_sep, features)."""
    owner = []  # our block index -> (their layers.n, residual index or None)
    for stage in range(3):
        owner.append((2 + 2 * stage, None))
        owner += [(3 + 2 * stage, i) for i in range(blocks[stage + 1])]
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("head.map_bn.") or key == "head.fc.bias":
            continue
        if m := re.fullmatch(r"conv1\.(\d)\.(.+)", key):
            key = f"layers.0.layers.{m[1]}.{m[2]}"
        elif m := re.fullmatch(r"conv2_dw\.(\d+)\.(expand|depthwise|project)\.(\d)\.(.+)", key):
            key = f"layers.1.layers.{m[1]}.layers.{PARTS[m[2]]}.layers.{m[3]}.{m[4]}"
        elif m := re.fullmatch(r"conv2_dw\.(\d)\.(.+)", key):
            key = f"layers.1.layers.{m[1]}.{m[2]}"
        elif m := re.fullmatch(r"blocks\.(\d+)\.(\w+)\.(\d)\.(.+)", key):
            layer, index = owner[int(m[1])]
            inner = f"layers.{PARTS[m[2]]}.layers.{m[3]}.{m[4]}"
            key = f"layers.{layer}.{inner}" if index is None else f"layers.{layer}.layers.{index}.{inner}"
        elif m := re.fullmatch(r"conv_sep\.(\d)\.(.+)", key):
            key = f"conv_sep.layers.{m[1]}.{m[2]}"
        elif m := re.fullmatch(r"head\.pool\.(\d)\.(.+)", key):
            key = f"features.layers.0.layers.{m[1]}.{m[2]}"
        elif key.startswith("head.fc."):
            key = "features.layers.2." + key.removeprefix("head.fc.")
        elif key.startswith("head.bn."):
            key = "features.layers.3." + key.removeprefix("head.bn.")
        out[key] = value.clone()
    return out


def _same_output(path, model: torch.nn.Module) -> np.ndarray:
    loaded = load_model(path)
    pixels = np.random.default_rng(3).uniform(0, 255, (2, 3, 112, 112)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy((pixels - 127.5) / 127.5)).numpy()
    np.testing.assert_allclose(loaded.forward(pixels), expected, rtol=1e-5, atol=1e-5)
    return loaded


@pytest.mark.slow
@pytest.mark.parametrize(("scale", "blocks", "label"), [(2, (1, 4, 6, 2), "mbf"),
                                                        pytest.param(4, (2, 8, 12, 4), "mbf_large",
                                                                     marks=pytest.mark.slow)])
def test_arcface_torch_mobilefacenet(tmp_path, scale, blocks, label):
    model = _mobilefacenet(scale, blocks)
    state = to_arcface_torch_mbf(model, blocks)
    assert "layers.1.layers.0.weight" in state or "layers.1.layers.0.layers.0.layers.0.weight" in state
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / f"{label}.pth")  # a DDP prefix
    loaded = _same_output(tmp_path / f"{label}.pth", model)
    assert loaded.card.backbone == "mobilefacenet" and loaded.card.embedding_size == 64
    assert loaded.card.backbone_kwargs["scale"] == scale and loaded.card.backbone_kwargs["blocks"] == list(blocks)


@pytest.mark.slow
def test_arcface_torch_vit(tmp_path):
    torch.manual_seed(0)
    model = _randomised(backbones.create("vit_t", embedding_size=32))
    state = {}
    for key, value in model.state_dict().items():
        key = key.replace("patch_embed.", "patch_embed.proj.").replace(".mlp.0.", ".mlp.fc1.")
        key = key.replace(".mlp.2.", ".mlp.fc2.")
        for i, name in enumerate(("fc1", "bn1", "fc2", "bn2")):
            key = key.replace(f"head.{name}.", f"feature.{i}.")
        state[key] = value
    torch.save(state, tmp_path / "vit_t.pth")
    loaded = _same_output(tmp_path / "vit_t.pth", model)
    assert loaded.card.backbone == "vit_t" and loaded.card.embedding_size == 32


def test_arcface_torch_vit_that_is_not_ours(tmp_path):
    state = {"patch_embed.proj.weight": torch.zeros(256, 3, 9, 9), "pos_embed": torch.zeros(1, 144, 256),
             **{f"blocks.{i}.norm1.weight": torch.ones(256) for i in range(12)}}
    torch.save({**state, "blocks.0.attn.qkv.bias": torch.zeros(768)}, tmp_path / "vit_bias.pth")
    with pytest.raises(ValueError, match="vit_bias.pth: an arcface_torch ViT built with qkv_bias=True"):
        load_model(tmp_path / "vit_bias.pth")
    del state["blocks.11.norm1.weight"]
    torch.save(state, tmp_path / "vit_odd.pth")
    with pytest.raises(ValueError, match="width 256 and depth 11, which is none of ours"):
        load_model(tmp_path / "vit_odd.pth")


def to_casia(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our mobilefacenet's state under the CASIA layout (reference_mobilefacenet.py's module names)."""
    names = ["conv_23", *(f"conv_3.model.{i}" for i in range(4)), "conv_34", *(f"conv_4.model.{i}" for i in range(6)),
             "conv_45", *(f"conv_5.model.{i}" for i in range(2))]
    parts = {"expand": "conv", "depthwise": "conv_dw", "project": "project"}
    layers = ("conv", "bn", "prelu")
    singles = {"conv_sep.0.": "sep.", "conv_sep.1.": "sep_bn.", "conv_sep.2.": "prelu.",
               "head.pool.0.": "GDC_dw.", "head.pool.1.": "GDC_bn.", "head.bn.": "last_bn."}
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("head.map_bn.") or key == "head.fc.bias":
            continue
        if m := re.fullmatch(r"(conv1|conv2_dw)\.(\d)\.(.+)", key):
            key = f"{m[1]}.{layers[int(m[2])]}.{m[3]}"
        elif m := re.fullmatch(r"blocks\.(\d+)\.(\w+)\.(\d)\.(.+)", key):
            key = f"{names[int(m[1])]}.{parts[m[2]]}.{layers[int(m[3])]}.{m[4]}"
        elif key == "head.fc.weight":
            key, value = "features.weight", value[:, :, None, None]
        else:
            key = next(theirs + key[len(o):] for o, theirs in singles.items() if key.startswith(o))
        out["arcface." + key] = value.clone()
    return out


@pytest.mark.slow
def test_casia_layout_key_map(tmp_path):
    model = _mobilefacenet(1, (1, 4, 6, 2), size=128)
    state = to_casia(model)
    assert len(state) == 333  # the shared CASIA file's count, num_batches_tracked included
    torch.save(state, tmp_path / "casia.pth")
    loaded = _same_output(tmp_path / "casia.pth", model)
    assert loaded.card.source == "casia_mobilefacenet-pth" and loaded.card.backbone_kwargs["fix_gamma"] is False
    del state["arcface.conv_4.model.3.conv_dw.bn.running_var"]
    torch.save(state, tmp_path / "casia_broken.pth")
    with pytest.raises(ValueError, match="first missing key of ours: blocks.9.depthwise.1.running_var"):
        load_model(tmp_path / "casia_broken.pth")


def test_unknown_layouts_are_named(tmp_path):
    torch.save({"encoder.conv.weight": torch.zeros(4, 3, 3, 3), "decoder.fc.weight": torch.zeros(2, 4)},
               tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other.pth: its top-level modules are \['decoder', 'encoder'\].*match none"
                       r".*MobileFaceNet \(mbf, mbf_large\)"):
        load_model(tmp_path / "other.pth")


# ------------------------------------------------------------------------------------------ the shared CASIA model
def _onnx_embeddings(path, pixels: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: pixels[i : i + 1]})[0] for i in range(len(pixels))])


@pytest.mark.slow
def test_shared_casia_pth_matches_its_onnx(shared_models, real_aligned_faces):
    """The .pth through our key map vs the repository's own ONNX export (normalisation in-graph) under
    onnxruntime, on 20 real aligned LFW faces: cosine >= 0.9999."""
    folder = shared_models / "bubbliiiing_mobilefacenet"
    loaded = load_model(folder / "arcface_mobilefacenet.pth")
    assert loaded.card.backbone == "mobilefacenet" and loaded.card.embedding_size == 128
    ours = loaded.forward(real_aligned_faces)
    reference = _onnx_embeddings(folder / "arcface_mobilefacenet_rgb255.onnx", real_aligned_faces).reshape(20, -1)
    ours, reference = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (ours, reference))
    assert (ours * reference).sum(1).min() >= 0.9999
