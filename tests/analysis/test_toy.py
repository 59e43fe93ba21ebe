"""The toy trainer: features of the requested dimension, and a margin tightens the classes (fixed seed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from marginface.analysis.curves import LossSpec
from marginface.analysis.toy import angular_spread, render_identities, train_toy


@pytest.fixture(scope="module")
def data():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network: one thread beats two contending ones
    yield render_identities(4, 16, image_size=16, seed=0)
    torch.set_num_threads(before)


@pytest.mark.parametrize("dim", [2, 3])
def test_toy_features_have_the_requested_dimension(data, dim):
    images, labels = data
    result = train_toy(LossSpec("softmax"), images, labels, dim=dim, steps=5, batch_size=16)
    assert result.features.shape == (64, dim) and result.labels.shape == (64,)
    assert np.isfinite(result.features).all()


@pytest.mark.slow
def test_a_margin_spreads_classes_less_than_softmax_on_a_fixed_seed(data):
    images, labels = data
    runs = {text: train_toy(LossSpec.parse(text), images, labels, dim=2, steps=150, batch_size=32, seed=0)
            for text in ("softmax", "sphereface:margin=4,lambda_gamma=1,lambda_min=0")}
    soft, margin = runs.values()
    assert soft.accuracy >= 0.9 and margin.accuracy >= 0.9  # both separate the classes: no collapse
    assert margin.spread_deg < soft.spread_deg, (margin.spread_deg, soft.spread_deg)


def test_angular_spread_against_a_hand_computed_case():
    # class 0: unit vectors at +-10 degrees around the x axis; class 1: three copies of the y axis
    t = np.radians(10.0)
    feats = np.array([[np.cos(t), np.sin(t)], [np.cos(t), -np.sin(t)], [0, 2.0], [0, 1.0], [0, 5.0]])
    assert angular_spread(feats, np.array([0, 0, 1, 1, 1])) == pytest.approx(10.0 * 2 / 5)
