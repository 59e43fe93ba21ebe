"""MobileFaceNet against table 1 and the published cost of Chen et al. 2018."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from marginface import backbones
from marginface.backbones.mobilefacenet import Bottleneck


def _meta(**kwargs: object) -> tuple[nn.Module, float]:
    with torch.device("meta"):
        model = backbones.create("mobilefacenet", **kwargs)
        with FlopCounterMode(display=False) as counter:
            model.eval()(torch.empty(1, 3, 112, 112))
    return model, counter.get_total_flops() / 2


def test_published_parameters_and_macs_at_128_d() -> None:
    # Paper: 0.99M parameters, 221M MACs for the 128-d model at 112x112.
    model, macs = _meta(embedding_size=128)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(0.99, rel=0.02)
    assert macs / 1e6 == pytest.approx(221, rel=0.01)


def test_table_1_shapes_expansions_and_residuals() -> None:
    with torch.device("meta"):
        model = backbones.create("mobilefacenet")
        seen: list[tuple[int, ...]] = []
        for block in model.blocks:
            block.register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape[1:])))
        model(torch.empty(2, 3, 112, 112))
    expected = [(64, 28, 28)] * 5 + [(128, 14, 14)] * 7 + [(128, 7, 7)] * 3
    assert seen == expected
    blocks: list[Bottleneck] = list(model.blocks)
    hidden = [b.expand[0].out_channels // b.expand[0].in_channels for b in blocks]
    assert hidden == [2] * 5 + [4] + [2] * 6 + [4] + [2] * 2
    # residual only where stride 1 and width unchanged: the first unit of each row of table 1 has none
    assert [b.residual for b in blocks] == [False, *[True] * 4, False, *[True] * 6, False, True, True]


def test_embedding_layer_is_a_global_depthwise_conv() -> None:
    model = backbones.create("mobilefacenet", embedding_size=128)
    gdc = model.head.pool[0]
    assert (gdc.kernel_size, gdc.groups, gdc.in_channels) == ((7, 7), 512, 512)
    assert model.head.fc.in_features == 512


def test_average_pool_option_e_is_the_full_fc() -> None:
    with torch.device("meta"):
        model = backbones.create("mobilefacenet", embedding_size=128, pool="avg")
    assert model.head.fc.in_features == 512 * 7 * 7
