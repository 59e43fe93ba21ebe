"""Embedding extraction: flip TTA against a float64 reference, batching, image loading, checkpoint loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from marginface.evaluation import embed


class TinyNet(nn.Module):
    """(B, 3, 16, 16) -> (B, 8); not flip-invariant, has dropout and batch norm (eval mode matters)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(3 * 16 * 16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.bn(x).flatten(1)))


def reference_embeddings(model: TinyNet, x: torch.Tensor, flip: bool) -> np.ndarray:
    """float64 by hand: eval-mode BN as an affine map, linear layer, optional mirror, sum, L2-normalise."""
    bn = model.bn
    xd = x.double()
    scale = (bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps))[None, :, None, None]
    shift = (bn.bias.double() - bn.running_mean.double() * scale.flatten())[None, :, None, None]
    w, b = model.fc.weight.double(), model.fc.bias.double()

    def f(v: torch.Tensor) -> torch.Tensor:
        return (v * scale + shift).flatten(1) @ w.T + b

    e = f(xd) + (f(xd.flip(3)) if flip else 0)
    return (e / e.norm(dim=1, keepdim=True)).detach().numpy()


@pytest.fixture
def model() -> TinyNet:
    torch.manual_seed(0)
    m = TinyNet()
    with torch.no_grad():  # non-trivial running statistics so that train/eval mode differ
        m.bn.running_mean.uniform_(-0.2, 0.2)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m


@pytest.mark.parametrize("flip", [True, False])
def test_embed_tensor_matches_reference(model: TinyNet, flip: bool) -> None:
    x = torch.rand(10, 3, 16, 16) * 2 - 1
    model.train()
    out = embed.embed_tensor(model, x, batch_size=3, flip=flip)
    assert out.dtype == np.float32 and out.shape == (10, 8)
    np.testing.assert_allclose(out, reference_embeddings(model, x, flip), atol=1e-5)
    assert model.training  # mode restored
    # batching does not change the result (beyond float32 GEMM blocking noise)
    np.testing.assert_allclose(out, embed.embed_tensor(model, x, batch_size=100, flip=flip), atol=1e-6)


def test_flip_changes_result(model: TinyNet) -> None:
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    assert not np.allclose(embed.embed_tensor(model, x, flip=True), embed.embed_tensor(model, x, flip=False))


def test_nan_embeddings_are_an_error(model: TinyNet) -> None:
    x = torch.zeros(2, 3, 16, 16)
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf embeddings"):
        embed.embed_tensor(model, x)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        embed.embed_tensor(model, torch.zeros(2, 16, 16))


def test_center_crop_resize_and_tensor_range(tmp_path: Path) -> None:
    pixels = np.zeros((250, 250, 3), np.uint8)
    pixels[50:200, 50:200] = 255  # the central 150x150 = 0.6 of the side
    image = Image.fromarray(pixels)
    out = embed.center_crop_resize(image)
    assert out.size == (112, 112)
    t = embed.image_to_tensor(out)
    assert t.shape == (3, 112, 112) and t.dtype == torch.float32
    assert torch.all(t == 1.0)  # only the white centre survived the crop
    assert torch.all(embed.image_to_tensor(Image.fromarray(np.zeros((4, 4, 3), np.uint8))) == -1.0)
    path = tmp_path / "a.png"
    image.save(path)
    assert torch.equal(embed.load_image(path), t)
    with pytest.raises(ValueError, match="250x250, expected 112x112 aligned faces"):
        embed.load_image(path, preprocess=None)


def test_embed_files_equals_embed_tensor(model: TinyNet, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    files = []
    for i in range(5):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(files[-1])

    def prep(im: Image.Image) -> Image.Image:
        return embed.center_crop_resize(im, size=16)

    stacked = torch.stack([embed.load_image(f, prep, size=16) for f in files])
    np.testing.assert_allclose(
        embed.embed_files(model, files, preprocess=prep, batch_size=2, size=16),
        embed.embed_tensor(model, stacked, batch_size=2), atol=1e-6,
    )


def test_load_backbone_weights(model: TinyNet, tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "plain.safetensors")
    save_file({**{f"backbone.{k}": v for k, v in state.items()}, "head.weight": torch.ones(3, 8)},
              tmp_path / "trainer.safetensors")
    for name in ("plain", "trainer"):
        fresh = TinyNet()
        embed.load_backbone_weights(fresh, tmp_path / f"{name}.safetensors")
        for k, v in fresh.state_dict().items():
            assert torch.equal(v, state[k]), k
    save_file({"fc.weight": torch.ones(2, 2)}, tmp_path / "wrong.safetensors")
    with pytest.raises(ValueError, match="does not fit this backbone"):
        embed.load_backbone_weights(TinyNet(), tmp_path / "wrong.safetensors")
    with pytest.raises(FileNotFoundError):
        embed.load_backbone_weights(TinyNet(), tmp_path / "absent.safetensors")
    (tmp_path / "x.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="must be a .safetensors"):
        embed.load_backbone_weights(TinyNet(), tmp_path / "x.pt")
