"""tiny28, the CPU-study backbone: its layers against a float64 reference written with torch.nn.functional, its
cost written out, and the layout the AM-LFS runs of docs/amlfs.md were made with."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from marginface import backbones


def _randomise_statistics(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial running statistics and scales, so that eval mode tests them."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
            if m.weight is not None:
                m.weight.data.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)


def _reference(x: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """The layer table of marginface.backbones.tiny, one functional call per row (eval mode, no dropout)."""

    def bn(t: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.batch_norm(t, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                            state.get(f"{prefix}.weight"), state[f"{prefix}.bias"], False, 0.0, 1e-5)

    x = F.avg_pool2d(x, 4)
    for i in range(3):
        x = F.conv2d(x, state[f"features.{i}.0.weight"], stride=2, padding=1)
        x = F.prelu(bn(x, f"features.{i}.1"), state[f"features.{i}.2.weight"])
    x = bn(x, "head.map_bn").flatten(1)
    return bn(F.linear(x, state["head.fc.weight"], state["head.fc.bias"]), "head.bn")


@pytest.mark.parametrize("fix_gamma", [True, False])
def test_forward_matches_a_float64_reference(faces: torch.Tensor, fix_gamma: bool) -> None:
    generator = torch.Generator().manual_seed(1)
    model = backbones.create("tiny28", embedding_size=32, fix_gamma=fix_gamma).double().eval()
    _randomise_statistics(model, generator)
    with torch.no_grad():
        got = model(faces.double())
        expected = _reference(faces.double(), {k: v for k, v in model.state_dict().items()})
    assert got.shape == (2, 32)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert ("head.bn.weight" in model.state_dict()) is not fix_gamma


def test_cost_is_the_layer_table_written_out() -> None:
    with torch.device("meta"):
        model = backbones.create("tiny28", embedding_size=128).eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, 112, 112))
    trunk = 14 * 14 * 32 * 3 * 9 + 7 * 7 * 64 * 32 * 9 + 4 * 4 * 128 * 64 * 9  # output positions x channels x kernel
    assert counter.get_total_flops() / 2 == trunk + 128 * 4 * 4 * 128  # + option E's FC over the 4x4 map


def test_fix_gamma_false_is_the_layout_of_the_amlfs_runs() -> None:
    """docs/amlfs.md's runs used this network written out in the benchmark (torch's default initialisation, a
    learned BN1d scale); with the same seed the library's tiny28 (fix_gamma false) creates the same weights and
    computes the same function, so those runs stay reproducible."""
    torch.manual_seed(0)
    layers, channels = [], 3
    for width in (32, 64, 128):
        layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                   nn.PReLU(width)]
        channels = width
    written_out = nn.Sequential(nn.AvgPool2d(4), *layers, nn.BatchNorm2d(128), nn.Flatten(),
                                nn.Linear(128 * 4 * 4, 64), nn.BatchNorm1d(64))
    torch.manual_seed(0)
    model = backbones.create("tiny28", embedding_size=64, fix_gamma=False)
    ours = [p for p in model.parameters()]
    theirs = [p for p in written_out.parameters()]
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    x = torch.rand(4, 3, 112, 112, generator=torch.Generator().manual_seed(2)) * 2 - 1
    torch.testing.assert_close(model(x), written_out(x), rtol=0, atol=0)  # training mode: batch statistics


def test_checkpointing_gives_the_same_gradients(faces: torch.Tensor) -> None:
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = backbones.create("tiny28", embedding_size=16, checkpointing=checkpointing)
        model(faces).square().sum().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a)
