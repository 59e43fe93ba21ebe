"""IR-ResNet: architecture against the ArcFace paper / insightface figures and a float64 unit reference."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from marginface import backbones
from marginface.backbones.iresnet import IRBlock, IResNet

# insightface arcface_torch README, "GFLOPs" column (multiply-accumulates at 112x112).
PUBLISHED_GMACS = {18: 2.6, 50: 6.3, 100: 12.1, 200: 23.5}
DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 200: (6, 26, 60, 6)}


def _expected_parameters(depths: tuple[int, ...], embedding_size: int = 512) -> int:
    """Parameter count of LResNet-E-IR written out from the paper's layer list (BN = 2C, PReLU = C)."""
    total = 3 * 64 * 9 + 2 * 64 + 64  # stem conv, BN, PReLU
    cin = 64
    for depth, cout in zip(depths, (64, 128, 256, 512)):
        for i in range(depth):
            c_in = cin if i == 0 else cout
            total += 2 * c_in + 9 * c_in * cout + 2 * cout + cout + 9 * cout * cout + 2 * cout
            if i == 0:  # stride 2: 1x1 conv + BN shortcut
                total += c_in * cout + 2 * cout
        cin = cout
    # option E: BN2d(512), FC(512*7*7 -> D) with bias, BN1d with its scale fixed (bias only)
    return total + 2 * 512 + 512 * 49 * embedding_size + embedding_size + embedding_size


@functools.cache
def _meta_model_macs(depth: int) -> tuple[nn.Module, float]:
    with torch.device("meta"):
        model = backbones.create(f"iresnet{depth}")
        with FlopCounterMode(display=False) as counter:
            model.eval()(torch.empty(1, 3, 112, 112))
    return model, counter.get_total_flops() / 2


@pytest.mark.parametrize("depth", sorted(DEPTHS))
def test_parameters_and_macs_match_the_architecture_and_published_figures(depth: int) -> None:
    model, macs = _meta_model_macs(depth)
    assert sum(p.numel() for p in model.parameters()) == _expected_parameters(DEPTHS[depth])
    if depth in PUBLISHED_GMACS:
        assert macs / 1e9 == pytest.approx(PUBLISHED_GMACS[depth], rel=0.01)


def test_iresnet100_parameters_near_the_published_mxnet_model() -> None:
    # LResNet100E-IR (insightface model zoo, as listed by OpenVINO's model zoo): 65.131M parameters.
    model, _ = _meta_model_macs(100)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(65.131, rel=1e-3)


def test_stages_halve_the_map_down_to_7x7x512() -> None:
    with torch.device("meta"):
        model = IResNet((1, 1, 1, 1))
        shapes = {}
        for i in range(1, 5):
            getattr(model, f"layer{i}")[-1].register_forward_hook(lambda m, a, out, i=i: shapes.update({i: out.shape}))
        model(torch.empty(2, 3, 112, 112))
    assert [tuple(shapes[i][1:]) for i in range(1, 5)] == [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)]


def _bn64(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    v = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
    return v(bn.weight) * (x - v(bn.running_mean)) / torch.sqrt(v(bn.running_var) + bn.eps) + v(bn.bias)


def _prelu64(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x, weight.view(1, -1, 1, 1) * x)


def _block_reference(block: IRBlock, x: torch.Tensor, stride: int) -> torch.Tensor:
    """BN - Conv3x3 - BN - PReLU - Conv3x3(stride) - BN (+ SE) + shortcut, from the paper's figure 7."""
    out = F.conv2d(_bn64(x, block.bn1), block.conv1.weight, padding=1)
    out = _prelu64(_bn64(out, block.bn2), block.prelu.weight)
    out = _bn64(F.conv2d(out, block.conv2.weight, stride=stride, padding=1), block.bn3)
    if block.se is not None:
        squeeze = out.mean(dim=(2, 3), keepdim=True)
        hidden = _prelu64(F.conv2d(squeeze, block.se.fc1.weight, block.se.fc1.bias), block.se.prelu.weight)
        out = out * torch.sigmoid(F.conv2d(hidden, block.se.fc2.weight, block.se.fc2.bias))
    shortcut = x
    if block.downsample is not None:
        shortcut = _bn64(F.conv2d(x, block.downsample[0].weight, stride=stride), block.downsample[1])
    return out + shortcut


@pytest.mark.parametrize(("cin", "cout", "stride", "se"), [(8, 8, 1, False), (8, 32, 2, False), (32, 32, 1, True)])
def test_ir_block_matches_float64_reference(cin: int, cout: int, stride: int, se: bool) -> None:
    torch.manual_seed(0)
    block = IRBlock(cin, cout, stride, se).double().eval()
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    x = torch.randn(2, cin, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _block_reference(block, x, stride), rtol=1e-10, atol=1e-10)
    assert (block.downsample is None) == (stride == 1 and cin == cout)


def test_se_adds_gates_and_every_parameter_trains(faces: torch.Tensor) -> None:
    model = IResNet((1, 1, 1, 1), se=True, output="D", embedding_size=64)
    assert sum(isinstance(m, nn.Module) and type(m).__name__ == "SqueezeExcitation" for m in model.modules()) == 4
    model(faces).square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_unknown_depth_is_refused() -> None:
    from marginface.backbones.iresnet import iresnet

    with pytest.raises(ValueError, match="available depths"):
        iresnet(42)
