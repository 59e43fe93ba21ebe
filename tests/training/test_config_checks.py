"""TrainConfig's loss checks: names by the loss's signature on every construction, values by the loss's own
constructor once per distinct setting (not on every construction or ``dataclasses.replace``)."""

from __future__ import annotations

import dataclasses

import pytest

from marginface import losses
from marginface.training import config as config_module
from marginface.training.config import ConfigError, LossConfig, TrainConfig


def test_replace_and_reconstruction_do_not_build_the_loss_again(monkeypatch):
    built = []
    real = losses.create
    monkeypatch.setattr(losses, "create", lambda *a, **k: (built.append(k), real(*a, **k))[1])
    config_module._check_loss_values.cache_clear()
    config = TrainConfig(loss=LossConfig(name="cosface", params={"scale": 30.0, "margin": 0.3}))
    assert len(built) == 1
    for steps in (5, 6, 7):
        dataclasses.replace(config, steps=steps)
    TrainConfig(loss=LossConfig(name="cosface", params={"margin": 0.3, "scale": 30.0}))  # same setting, other order
    assert len(built) == 1
    TrainConfig(loss=LossConfig(name="cosface", params={"scale": 30.0, "margin": 0.25}))  # a new value is checked
    assert len(built) == 2


def test_bad_values_fail_every_time_with_the_field_named():
    for _ in range(2):  # a failed check is not remembered as passed
        with pytest.raises(ConfigError, match=r"config field loss.params: margin \(radians\) must lie in \[0, pi/2\)"):
            TrainConfig(loss=LossConfig(name="arcface", params={"margin": 2.0}))
    config = TrainConfig()
    with pytest.raises(ConfigError, match="config field loss.params: margin"):
        dataclasses.replace(config, loss=LossConfig(name="arcface", params={"margin": 2.0}))


def test_bad_names_are_found_from_the_signature_alone(monkeypatch):
    monkeypatch.setattr(losses, "create", lambda *a, **k: pytest.fail("the name check built the loss"))
    with pytest.raises(ConfigError, match="loss 'arcface' has no parameter 'margn' \\(did you mean 'margin'\\?\\)"):
        LossConfig(name="arcface", params={"margn": 0.3})
    with pytest.raises(ConfigError, match="config field loss.name: unknown loss 'arcfce'"):
        LossConfig(name="arcfce")
