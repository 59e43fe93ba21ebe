"""MobileNet (V1) for 112x112 faces: table 1 of Howard et al. 2017, its published cost, the backbone contract."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from marginface import backbones
from marginface.backbones.mobilenet import SEPARABLE_BLOCKS


@functools.cache
def _meta(**kwargs: object) -> tuple[nn.Module, float]:
    with torch.device("meta"):
        model = backbones.create("mobilenet", **kwargs).eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, 112, 112))
    return model, counter.get_total_flops() / 2


def _trunk_parameters(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head."))


def test_trunk_parameters_follow_the_layer_list() -> None:
    """Count written out from table 1: conv3x3 3->32, then per block dw 3x3 (C) + pw (C->C'); BN 2C, PReLU C."""
    expected, channels = 27 * 32 + 3 * 32, 32
    for width, _ in SEPARABLE_BLOCKS:
        expected += 9 * channels + 3 * channels  # depthwise kernel, BN scale/shift, PReLU slope
        expected += channels * width + 3 * width
        channels = width
    assert _trunk_parameters(_meta()[0]) == expected


def test_published_cost_of_mobilenet_224() -> None:
    """The 112x112 face trunk has the ImageNet 224x224 network's maps (stride-1 first conv): Howard et al. 2017
    table 8 gives 569M mult-adds and 4.2M parameters, both with the 1024->1000 classifier (1.025M, 1M MACs);
    keras.applications.MobileNet(alpha=1) has exactly 4,231,976 trainable parameters (BN scale/shift included)."""
    model, macs = _meta(embedding_size=512)
    head_macs = 7 * 7 * 1024 * 512  # option E's FC over the flattened map
    assert (macs - head_macs + 1024 * 1000) / 1e6 == pytest.approx(569, rel=0.005)
    prelu = sum(p.numel() for m in model.modules() if isinstance(m, nn.PReLU) for p in m.parameters())
    assert prelu == 10_944  # ours adds one PReLU slope per channel (ReLU in the ImageNet network)
    assert _trunk_parameters(model) - prelu + 1024 * 1000 + 1000 == 4_231_976


def test_maps_follow_table_1_and_width_mult_scales_every_width() -> None:
    model, _ = _meta(width_mult=0.5)
    sizes = []
    with torch.device("meta"):
        x = model.conv1(torch.empty(1, 3, 112, 112))
        for block in model.blocks:
            x = block(x)
            sizes.append((x.shape[1], x.shape[2]))
    assert sizes[0] == (32, 112) and sizes[2] == (64, 56) and sizes[4] == (128, 28) and sizes[-1] == (512, 7)
    with pytest.raises(ValueError, match="width_mult"):
        backbones.create("mobilenet", width_mult=0)


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return backbones.create("mobilenet", embedding_size=64, width_mult=0.25)


def test_channels_last_gives_the_same_embeddings(model: nn.Module, faces: torch.Tensor) -> None:
    model.eval()
    with torch.no_grad():
        expected = model(faces)
        got = model.to(memory_format=torch.channels_last)(faces.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_checkpointing_gives_the_same_gradients(faces: torch.Tensor) -> None:
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        net = backbones.create("mobilenet", embedding_size=64, width_mult=0.25, checkpointing=checkpointing)
        net(faces).square().sum().backward()
        grads.append([p.grad for p in net.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_safetensors_round_trip(model: nn.Module, faces: torch.Tensor, tmp_path: Path) -> None:
    model(faces)  # move the BN running statistics off their initial values
    backbones.save_weights(model, tmp_path / "m.safetensors")
    torch.manual_seed(1)
    other = backbones.create("mobilenet", embedding_size=64, width_mult=0.25)
    backbones.load_weights(other, tmp_path / "m.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(faces), model.eval()(faces), rtol=0, atol=0)


@pytest.mark.slow
def test_dynamo_traces_the_whole_model_without_graph_breaks(model: nn.Module, faces: torch.Tensor) -> None:
    torch._dynamo.reset()
    model.eval()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(faces), model(faces))
