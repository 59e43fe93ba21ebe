"""Output options A-E against a float64 reference written from the ArcFace paper's definitions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from marginface.backbones.embedding import EmbeddingHead, FixedGammaBatchNorm1d

C, S = 16, 7


def _randomise(module: nn.Module) -> None:
    """Non-trivial BN statistics and affine values, so a wrong formula cannot pass by accident."""
    generator = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
            if m.weight is not None:
                m.weight.data.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
            if m.bias is not None:
                m.bias.data.copy_(torch.randn(m.bias.shape, generator=generator))
        if isinstance(m, nn.PReLU):
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=generator))


def _bn(x: torch.Tensor, bn: nn.Module, channel_dim: int) -> torch.Tensor:
    """Eval-mode BatchNorm, written out: gamma * (x - mean) / sqrt(var + eps) + beta."""
    shape = [1] * x.ndim
    shape[channel_dim] = -1
    gamma = torch.ones_like(bn.running_mean) if bn.weight is None else bn.weight
    out = (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
    return gamma.view(shape) * out + bn.bias.view(shape)


def _reference(head: EmbeddingHead, x: torch.Tensor, pool: str) -> torch.Tensor:
    """Each option by the paper's recipe, with explicit loops/sums instead of torch modules."""
    option = head.output
    if option == "E":
        x = _bn(x, head.map_bn, 1)
    if option != "E" or pool == "gdc":
        if pool == "avg":
            x = x.sum(dim=(2, 3)) / (S * S)
        else:
            kernel = head.pool[0].weight[:, 0]  # (C, S, S): one spatial weighting per channel
            x = _bn((x * kernel).sum(dim=(2, 3)), head.pool[1], 1)
    x = x.reshape(x.shape[0], -1)
    if option == "A":
        return x
    x = x @ head.fc.weight.T + head.fc.bias
    if option in ("C", "D", "E"):
        x = _bn(x, head.bn, 1)
    if option == "D":
        x = torch.where(x >= 0, x, head.prelu.weight * x)
    return x


@pytest.mark.parametrize("pool", ["avg", "gdc"])
@pytest.mark.parametrize("option", ["A", "B", "C", "D", "E"])
def test_option_matches_float64_reference(option: str, pool: str) -> None:
    size = C if option == "A" else 10
    head = EmbeddingHead(option, C, S, size, dropout=0.3 if option != "A" else 0.0, pool=pool)
    _randomise(head)
    head = head.double().eval()
    x = torch.randn(3, C, S, S, dtype=torch.float64)
    got = head(x)
    assert got.shape == (3, size)
    torch.testing.assert_close(got, _reference(head, x, pool), rtol=1e-10, atol=1e-10)


def test_option_e_fc_sees_the_whole_map_and_gdc_factorises_it() -> None:
    full = EmbeddingHead("E", C, S, 10, pool="avg")
    factorised = EmbeddingHead("E", C, S, 10, pool="gdc")
    assert full.fc.in_features == C * S * S
    assert factorised.fc.in_features == C
    assert isinstance(full.bn, FixedGammaBatchNorm1d) and full.bn.weight is None


def test_fix_gamma_false_gives_a_learnable_scale() -> None:
    head = EmbeddingHead("E", C, S, 10, fix_gamma=False)
    assert isinstance(head.bn.weight, nn.Parameter)


def test_fixed_gamma_bn_trains_like_batchnorm_with_unit_scale() -> None:
    fixed, plain = FixedGammaBatchNorm1d(6), nn.BatchNorm1d(6)
    plain.bias.data.copy_(torch.arange(6.0))
    fixed.bias.data.copy_(torch.arange(6.0))
    x = torch.randn(8, 6)
    torch.testing.assert_close(fixed(x), plain(x))
    torch.testing.assert_close(fixed.running_mean, plain.running_mean)
    torch.testing.assert_close(fixed.running_var, plain.running_var)


def test_dropout_is_active_in_training_only() -> None:
    head = EmbeddingHead("B", C, S, 10, dropout=0.5)
    x = torch.randn(4, C, S, S)
    head.eval()
    torch.testing.assert_close(head(x), head(x))
    head.train()
    assert not torch.equal(head(x), head(x))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"output": "F"}, "output option"),
        ({"output": "A", "embedding_size": 10}, "embedding_size must be 16"),
        ({"output": "A", "embedding_size": C, "dropout": 0.1}, "no FC"),
        ({"pool": "max"}, "pooling kind"),
        ({"dropout": 1.0}, "probability"),
        ({"embedding_size": 0}, "positive"),
    ],
)
def test_bad_head_arguments_are_named(kwargs: dict, message: str) -> None:
    args = {"output": "E", "embedding_size": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        EmbeddingHead(args.pop("output"), C, S, args.pop("embedding_size"), **args)
