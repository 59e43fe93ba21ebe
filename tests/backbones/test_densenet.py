"""DenseNet-121 for 112x112 faces: table 1 of Huang et al. 2017, its published cost, the backbone contract."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from marginface import backbones
from marginface.backbones.densenet import DenseNet


@functools.cache
def _meta() -> tuple[nn.Module, float]:
    with torch.device("meta"):
        model = backbones.create("densenet121", embedding_size=512).eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, 112, 112))
    return model, counter.get_total_flops() / 2


def _trunk_parameters(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head."))


def test_trunk_parameters_follow_the_layer_list() -> None:
    """Written out from table 1 (k = 32, 6-12-24-16 layers, compression 0.5); BN 2C and PReLU C per norm."""
    k, channels = 32, 64
    expected = 27 * 64 + 2 * 64  # stem conv3x3 + BN
    for i, layers in enumerate((6, 12, 24, 16)):
        for _ in range(layers):
            expected += 3 * channels + channels * 4 * k + 3 * 4 * k + 4 * k * 9 * k
            channels += k
        if i < 3:
            expected += 3 * channels + channels * (channels // 2)
            channels //= 2
    expected += 2 * channels  # final BN
    model, _ = _meta()
    assert channels == 1024 and _trunk_parameters(model) == expected


def test_published_cost_of_densenet121_224() -> None:
    """torchvision's densenet121 (the paper's DenseNet-BC-121): 7,978,856 parameters, 2.83 GMACs at 224x224.

    Ours differs only in the stem (3x3 stride-1 conv instead of 7x7 stride 2, same 56x56 maps after the
    max-pool), the PReLU slopes and the embedding layer instead of the 1024->1000 classifier.
    """
    model, macs = _meta()
    prelu = sum(p.numel() for m in model.modules() if isinstance(m, nn.PReLU) for p in m.parameters())
    stem_difference = (49 - 9) * 3 * 64  # 7x7 vs 3x3 kernels, 3 -> 64 channels
    assert _trunk_parameters(model) - prelu + stem_difference + 1024 * 1000 + 1000 == 7_978_856
    imagenet_macs = macs - 7 * 7 * 1024 * 512 + 1024 * 1000 + stem_difference * 112 * 112
    assert imagenet_macs / 1e9 == pytest.approx(2.83, rel=0.005)


def test_maps_halve_at_each_transition_and_depths_are_checked() -> None:
    model, _ = _meta()
    with torch.device("meta"):
        x = model.stem(torch.empty(1, 3, 112, 112))
        sizes = [x.shape[2]]
        for stage in model.features:
            x = stage(x)
            sizes.append(x.shape[2])
    assert sorted(set(sizes), reverse=True) == [56, 28, 14, 7] and x.shape[1] == 1024
    with pytest.raises(ValueError, match="121"):
        DenseNet(depth=100)


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return backbones.create("densenet121", embedding_size=64)


def _calibrate(model: nn.Module, faces: torch.Tensor) -> None:
    """Running statistics := these faces' (momentum 1): with the initial 0 / 1 statistics 120 eval-mode layers
    grow the activations to ~1e4, where float32 summation order alone changes the output by 1e-3 relative."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 1.0
    with torch.no_grad():
        model.train()(faces)


def test_channels_last_gives_the_same_embeddings(model: nn.Module, faces: torch.Tensor) -> None:
    _calibrate(model, faces)
    model.eval()
    with torch.no_grad():
        expected = model(faces)
        got = model.to(memory_format=torch.channels_last)(faces.to(memory_format=torch.channels_last))
    # 120 layers of float32 convolutions whose summation order depends on the layout (oneDNN), then a BN1d whose
    # statistics come from 2 samples: 2e-4 differences on outputs of size ~1 were seen; a layout bug gives O(1)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)


def test_checkpointing_gives_the_same_gradients_and_statistics(faces: torch.Tensor) -> None:
    models = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        net = backbones.create("densenet121", embedding_size=64, checkpointing=checkpointing)
        net(faces).square().sum().backward()
        models.append(net)
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)
    for (name, a), b in zip(models[0].named_buffers(), models[1].buffers()):
        torch.testing.assert_close(b, a, msg=name)


def test_safetensors_round_trip(model: nn.Module, faces: torch.Tensor, tmp_path: Path) -> None:
    model(faces)  # move the BN running statistics off their initial values
    backbones.save_weights(model, tmp_path / "d.safetensors")
    torch.manual_seed(1)
    other = backbones.create("densenet121", embedding_size=64)
    backbones.load_weights(other, tmp_path / "d.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(faces), model.eval()(faces), rtol=0, atol=0)


@pytest.mark.slow
def test_dynamo_traces_the_whole_model_without_graph_breaks(model: nn.Module, faces: torch.Tensor) -> None:
    torch._dynamo.reset()
    model.eval()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(faces), model(faces))
