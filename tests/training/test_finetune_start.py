"""Fine-tuning a strong model (issue 30): the input contract folded into the first convolution, class-mean
centres, frozen BatchNorm statistics and the no-training ("as is", steps 0) run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tests.training.test_finetune import init_model  # noqa: F401  (fixture)
from tests.training.test_trainer import tiny_config
from torch import nn

from marginface import backbones
from marginface.inference.card import InputContract
from marginface.training.config import ConfigError, load_config
from marginface.training.finetune import (
    adopt_input_contract,
    class_mean_centres,
    first_input_conv,
    set_train_mode,
)
from marginface.training.trainer import Trainer, plot_loss_curve


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = backbones.create("mobilefacenet", embedding_size=16)
    with torch.no_grad():  # trained-looking BN statistics, so eval mode is not near the identity
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _pixels(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 112, 112, generator=torch.Generator().manual_seed(1)) * 255


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_folded_contract_computes_what_the_cards_contract_computed(order):
    """model(card-normalised pixels) == folded model((pixels - 127.5) / 127.5), in float64."""
    contract = InputContract(channel_order=order, mean=[127.5] * 3, std=[128.0, 120.0, 131.0])
    model = _model().double()
    pixels = _pixels().double()
    planes = pixels.flip(1) if order == "BGR" else pixels
    std = torch.tensor(contract.std, dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model((planes - 127.5) / std)
        line = adopt_input_contract(model, contract)
        actual = model((pixels - 127.5) / 127.5)
    assert "folded" in line and order in line
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def test_the_trainers_own_contract_changes_nothing_and_the_unfoldable_ones_are_refused():
    model = _model()
    before = first_input_conv(model).weight.detach().clone()
    assert adopt_input_contract(model, InputContract()) == ""
    assert torch.equal(first_input_conv(model).weight, before)
    with pytest.raises(ConfigError, match="mean"):
        adopt_input_contract(model, InputContract(mean=[0.0] * 3, std=[1.0] * 3))
    with pytest.raises(ConfigError, match="96x96"):
        adopt_input_contract(model, InputContract(size=96))
    two = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3))
    with pytest.raises(ConfigError, match="2 convolutions"):
        adopt_input_contract(two, InputContract(std=[128.0] * 3))


class _Embed(nn.Module):
    """A small backbone for the class-mean test: flatten, linear, BN (so eval/train mode matters)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.bn = nn.Linear(12, 5), nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x.flatten(1)))


def test_class_mean_centres_match_a_float64_loop():
    torch.manual_seed(0)
    model = _Embed()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    labels = [0, 2, 1, 2, 0, 0, 1, 3, 3, 2, 1]
    data = [(torch.randn(3, 2, 2), c) for c in labels]
    model.train()
    centres = class_mean_centres(model, data, num_classes=4, batch_size=3)
    assert model.training  # its mode is restored
    # the naive reference: eval-mode forward of each image alone, in float64, normalise, sum, normalise
    w, b = model.fc.weight.detach().double().numpy(), model.fc.bias.detach().double().numpy()
    mean, var = model.bn.running_mean.double().numpy(), model.bn.running_var.double().numpy()
    gamma, beta = model.bn.weight.detach().double().numpy(), model.bn.bias.detach().double().numpy()
    expected = np.zeros((4, 5))
    for image, c in data:
        z = w @ image.double().numpy().reshape(-1) + b
        e = (z - mean) / np.sqrt(var + model.bn.eps) * gamma + beta
        expected[c] += e / np.linalg.norm(e)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert centres.dtype == torch.float32 and centres.shape == (4, 5)
    np.testing.assert_allclose(centres.numpy(), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"classes \[4\] have no image"):
        class_mean_centres(model, data, num_classes=5, batch_size=4)


def test_frozen_bn_trains_in_eval_mode_and_keeps_the_statistics():
    model = _model()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    pixels = (_pixels(4) - 127.5) / 127.5
    with torch.no_grad():
        reference = model(pixels)
    set_train_mode(model, freeze_bn=True)
    assert model.training and not any(m.training for m in model.modules()
                                       if isinstance(m, nn.modules.batchnorm._BatchNorm))
    out = model(pixels)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)  # the training forward is the model's
    out.square().sum().backward()
    assert model.head.bn.bias.grad is not None  # BN shift still learns
    for key, value in model.state_dict().items():
        if key in stats:
            assert torch.equal(value, stats[key]), key
    set_train_mode(model, freeze_bn=False)
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize(("overrides", "match"), [
    (["model.init_centres=means"], "must be 'random' or 'class_means'"),
    (["model.init_centres=class_means"], "needs model.init_from"),
    (["model.init_centres=class_means", "model.init_from=x", "model.init_loss=true"], "keep one"),
    (["model.init_centres=class_means", "model.init_from=x", "loss.name=triplet", "data.sampler=pk"],
     "triplet has none"),
    (["steps=0"], "needs model.init_from"),
    (["steps=-1"], "must be >= 1"),
])
def test_fine_tuning_settings_that_cannot_work_are_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_class_means_init_sets_the_centres_from_the_starting_backbone(tmp_path, init_model):  # noqa: F811
    config = tiny_config(tmp_path, "data.synthetic_identities=6", "batch_size=4", "steps=1", "loss.name=cosface",
                         f"model.init_from={init_model}", "model.init_centres=class_means")
    trainer = Trainer(config).setup()
    expected = class_mean_centres(trainer.backbone, trainer.dataset, 6)
    torch.testing.assert_close(trainer.loss.weight.detach(), expected, rtol=0, atol=1e-6)
    assert torch.allclose(trainer.loss.weight.detach().norm(dim=1), torch.ones(6))
    softmax = tiny_config(tmp_path / "s", "data.synthetic_identities=6", "batch_size=4", "steps=1",
                          "loss.name=softmax", f"model.init_from={init_model}", "model.init_centres=class_means")
    with pytest.raises(ConfigError, match="raw"):
        Trainer(softmax).setup()


def test_steps_0_checkpoints_the_starting_model_as_is(tmp_path, init_model):  # noqa: F811
    config = tiny_config(tmp_path, "data.synthetic_identities=6", "batch_size=4", "steps=0", "loss.name=arcface",
                         f"model.init_from={init_model}", "validation.bins=[]")
    Trainer(config).setup().fit()
    saved = load_file(str(tmp_path / "checkpoints" / "step_00000000" / "model.safetensors"))
    start = load_file(str(init_model / "model.safetensors"))
    backbone = sorted(k for k in start if k.startswith("backbone."))
    assert backbone and all(torch.equal(saved[k], start[k]) for k in backbone)
    assert (tmp_path / "checkpoints" / "step_00000000" / "state.json").is_file()
    assert plot_loss_curve(tmp_path) is None  # nothing logged: no figure (`marginface train` draws it after fit)


def test_frozen_bn_statistics_stay_frozen_through_a_step_of_the_trainer_and_the_search(tmp_path):
    from marginface.experiments.search import train_copy

    changed = {}
    for freeze in (True, False):
        trainer = Trainer(tiny_config(tmp_path / str(freeze), "data.synthetic_identities=4", "batch_size=4",
                                      "steps=2", "loss.name=arcface", f"model.freeze_bn={str(freeze).lower()}")).setup()
        stats = {k: v.clone() for k, v in trainer.backbone.state_dict().items() if "running" in k}
        train_copy(trainer, 0, 1)  # the AM-LFS search's step; it calls the trainer's train_step
        assert trainer.step == 1
        changed[freeze] = [k for k, v in trainer.backbone.state_dict().items() if k in stats
                           and not torch.equal(v, stats[k])]
        bn_training = [m.training for m in trainer.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert not any(bn_training) if freeze else all(bn_training)
    assert changed[True] == [] and changed[False]  # train-mode BN moves its statistics in one step; frozen does not
