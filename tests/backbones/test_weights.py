"""safetensors round trip and the insightface arcface_torch IResNet name mapping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from marginface import backbones
from marginface.backbones.iresnet import IResNet
from marginface.backbones.weights import insightface_to_marginface, load_insightface, load_weights, save_weights


class _TheirBlock(nn.Module):
    """insightface's IBasicBlock, re-typed from its public parameter names (bn1 conv1 bn2 prelu conv2 bn3)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn2, self.prelu = nn.BatchNorm2d(cout), nn.PReLU(cout)
        self.conv2, self.bn3 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class _TheirIResNet(nn.Module):
    """insightface arcface_torch IResNet (names conv1 bn1 prelu layer1-4 bn2 dropout fc features)."""

    def __init__(self, depths: tuple[int, ...], num_features: int = 512) -> None:
        super().__init__()
        self.conv1, self.bn1, self.prelu = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)
        cin = 64
        for i, (depth, width) in enumerate(zip(depths, (64, 128, 256, 512)), start=1):
            blocks = [_TheirBlock(cin if j == 0 else width, width, 2 if j == 0 else 1) for j in range(depth)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            cin = width
        self.bn2, self.dropout = nn.BatchNorm2d(512), nn.Dropout(0.0)
        self.fc, self.features = nn.Linear(512 * 49, num_features), nn.BatchNorm1d(num_features)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.features(self.fc(self.dropout(torch.flatten(self.bn2(x), 1))))


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
            if m.bias is not None:
                m.bias.data.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)


# One unit per stage exercises every name the mapping knows (stem, stride-2 units with downsample, head)
# at a quarter of iresnet18's cost; test_insightface_into_iresnet18 covers the registry model's key set.
_DEPTHS = (1, 1, 1, 1)


@pytest.fixture(scope="module")
def theirs() -> _TheirIResNet:
    torch.manual_seed(3)
    model = _TheirIResNet(_DEPTHS)
    _randomise_batchnorm(model)
    return model.eval()


def test_insightface_state_dict_loads_and_gives_the_same_embeddings(theirs: _TheirIResNet, faces) -> None:
    ours = load_insightface(IResNet(_DEPTHS), theirs.state_dict())
    with torch.no_grad():
        expected = theirs.double()(faces[:1].double())
        got = ours.double().eval()(faces[:1].double())
    theirs.float()
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_insightface_pth_file_loads_with_module_prefix(theirs: _TheirIResNet, tmp_path: Path, faces) -> None:
    path = tmp_path / "backbone.pth"
    torch.save({"module." + k: v for k, v in theirs.state_dict().items()}, path)
    ours = load_insightface(IResNet(_DEPTHS), path).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(faces), theirs(faces), rtol=1e-4, atol=1e-4)


def test_insightface_mismatch_lists_missing_and_unexpected_keys(theirs: _TheirIResNet) -> None:
    state = dict(theirs.state_dict())
    del state["layer2.0.conv1.weight"]
    state["layer9.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys.*layer2\.0\.conv1\.weight") as info:
        load_insightface(IResNet(_DEPTHS), state)
    assert "layer9.0.conv1.weight" in str(info.value)


def test_insightface_into_iresnet18() -> None:
    state = _TheirIResNet((2, 2, 2, 2)).state_dict()
    load_insightface(backbones.create("iresnet18"), state)
    with pytest.raises(ValueError, match=r"missing keys.*layer1\.2\."):
        load_insightface(backbones.create("iresnet34"), state)


def test_trained_features_weight_needs_fix_gamma_false(theirs: _TheirIResNet) -> None:
    state = dict(theirs.state_dict())
    state["features.weight"] = torch.full((512,), 2.0)
    with pytest.raises(ValueError, match="fix_gamma=False"):
        insightface_to_marginface(state)
    ours = load_insightface(IResNet(_DEPTHS, fix_gamma=False), state)
    torch.testing.assert_close(ours.head.bn.weight.detach(), state["features.weight"])


def test_insightface_needs_option_e_iresnet(theirs: _TheirIResNet) -> None:
    with pytest.raises(ValueError, match="output='E'"):
        load_insightface(IResNet(_DEPTHS, output="C"), theirs.state_dict())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_insightface(IResNet(_DEPTHS), "/nonexistent/backbone.pth")


def test_safetensors_round_trip_restores_outputs_exactly(tmp_path: Path, faces) -> None:
    torch.manual_seed(0)
    source = backbones.create("mobilefacenet", embedding_size=128, output="D")
    _randomise_batchnorm(source, seed=5)
    source = source.to(memory_format=torch.channels_last)  # non-contiguous weights must still save
    save_weights(source, tmp_path / "mbf.safetensors", metadata={"name": "mobilefacenet"})
    torch.manual_seed(1)
    target = backbones.create("mobilefacenet", embedding_size=128, output="D").to(memory_format=torch.channels_last)
    load_weights(target, tmp_path / "mbf.safetensors")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(target.eval()(faces), source.eval()(faces))


def test_safetensors_into_wrong_model_lists_shape_mismatch(tmp_path: Path) -> None:
    save_weights(backbones.create("mobilefacenet", embedding_size=128), tmp_path / "mbf.safetensors")
    with pytest.raises(ValueError, match=r"shape mismatches.*head\.fc\.weight"):
        load_weights(backbones.create("mobilefacenet", embedding_size=256), tmp_path / "mbf.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_weights(backbones.create("mobilefacenet"), tmp_path / "absent.safetensors")
