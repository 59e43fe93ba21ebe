"""AM-LFS search: the REINFORCE step by hand, the broadcast, and resume-equals-straight on a tiny CPU search."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from marginface.experiments.search import (
    STATE_FILE,
    SearchSettings,
    identity_mean,
    load_search_config,
    normalise_rewards,
    read_search,
    reinforce_update,
    run_search,
    train_copy,
    unpack,
)
from marginface.experiments.search_figure import plot_search
from marginface.training.config import ConfigError


def test_reinforce_update_equals_the_hand_computed_step():
    """mu = (0, 1), sigma 0.2, eta 0.1, rewards (0.9, 0.5, 0.7): normalised (+sqrt(1.5), -sqrt(1.5), 0).

    gradient = (1/3) [sqrt(1.5) (0.2, 0) / 0.04 - sqrt(1.5) (-0.2, 0.4) / 0.04] = (10/3) sqrt(1.5) (1, -1).
    """
    mean = torch.tensor([0.0, 1.0], dtype=torch.float64)
    samples = torch.tensor([[0.2, 1.0], [-0.2, 1.4], [0.0, 0.6]], dtype=torch.float64)
    rewards = torch.tensor([0.9, 0.5, 0.7], dtype=torch.float64)
    step = 0.1 * 10.0 / 3.0 * math.sqrt(1.5)
    new = reinforce_update(mean, samples, rewards, sigma=0.2, lr=0.1)
    torch.testing.assert_close(new, torch.tensor([step, 1.0 - step], dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_raw_rewards_weight_the_step_by_the_rewards_themselves():
    """reward='raw': gradient = (1/3) [0.9 (0.2, 0) + 0.5 (-0.2, 0.4) + 0.7 (0, -0.4)] / 0.04 = (0.08, -0.08) / 0.12."""
    mean = torch.tensor([0.0, 1.0], dtype=torch.float64)
    samples = torch.tensor([[0.2, 1.0], [-0.2, 1.4], [0.0, 0.6]], dtype=torch.float64)
    rewards = torch.tensor([0.9, 0.5, 0.7], dtype=torch.float64)
    new = reinforce_update(mean, samples, rewards, sigma=0.2, lr=0.1, reward="raw")
    expected = torch.tensor([0.1 * 0.08 / 0.12, 1.0 - 0.1 * 0.08 / 0.12], dtype=torch.float64)
    torch.testing.assert_close(new, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError, match="search.reward"):
        SearchSettings(reward="baseline")


def test_equal_rewards_leave_the_mean_unchanged():
    mean = torch.tensor([1.0, 0.0], dtype=torch.float64)
    samples = torch.randn(4, 2, dtype=torch.float64)
    assert torch.equal(normalise_rewards(torch.full((4,), 0.8)), torch.zeros(4, dtype=torch.float64))
    assert torch.equal(reinforce_update(mean, samples, torch.full((4,), 0.8), 0.2, 0.5), mean)


def test_eta_zero_is_the_no_learning_control_and_negative_settings_are_refused():
    mean, samples = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    assert torch.equal(reinforce_update(mean, samples, torch.tensor([0.9, 0.5, 0.7]), 0.2, 0.0), mean)
    SearchSettings(lr=0.0)
    for bad in ({"lr": -0.1}, {"sigma": 0.0}, {"lr": float("nan")}):
        with pytest.raises(ConfigError, match="search.sigma must be positive and search.lr >= 0"):
            SearchSettings(**bad)


def test_identity_mean_is_plain_softmax_and_unpacks_by_part():
    settings = SearchSettings(logit_intervals=3, prob_intervals=2, space="both")
    params = unpack(identity_mean(settings), settings)
    assert params == {"logit_slopes": [1.0] * 3, "logit_intercepts": [0.0] * 3,
                      "prob_slopes": [1.0] * 2, "prob_intercepts": [0.0] * 2}
    assert list(unpack(identity_mean(SearchSettings(space="logit")), SearchSettings(space="logit"))) == [
        "logit_slopes", "logit_intercepts"]


TINY = {
    "data": {"source": "synthetic", "synthetic_identities": 6, "synthetic_images_per_identity": 2, "flip": True},
    "model": {"backbone": "mobilefacenet", "embedding_size": 32},
    "loss": {"name": "amlfs", "params": {"scale": 16.0}},
    "optim": {"lr": 0.05},
    "validation": {"synthetic_pairs": 10, "synthetic_identities": 4, "batch_size": 20},
    "batch_size": 2, "device": "cpu", "deterministic": True, "checkpoint_every": 1000,
    "search": {"rounds": 2, "samples": 2, "steps_per_round": 1, "logit_intervals": 3, "prob_intervals": 2,
               "sigma": 0.3, "lr": 0.1, "seed": 3},
}


TINY_SETTINGS = SearchSettings(**TINY["search"])


def tiny_search(tmp_path: Path, name: str, **search):
    values = {**TINY, "output_dir": str(tmp_path / name), "search": {**TINY["search"], **search}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return load_search_config(path)


@pytest.mark.slow
def test_resume_mid_search_equals_the_straight_search(tmp_path):
    straight = run_search(tiny_search(tmp_path, "straight"), progress=False)
    first = run_search(tiny_search(tmp_path, "resumed"), max_rounds=1, progress=False)
    assert first.round == 1
    resumed = run_search(tiny_search(tmp_path, "resumed"), progress=False)  # a new process would do the same
    assert resumed.round == straight.round == 2
    torch.testing.assert_close(resumed.mean, straight.mean, rtol=0, atol=0)
    assert resumed.history == straight.history
    a = load_file(str(tmp_path / "straight" / STATE_FILE))
    b = load_file(str(tmp_path / "resumed" / STATE_FILE))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log = (tmp_path / "straight" / "search_log.csv").read_text().splitlines()
    assert log[0].startswith("round,row,reward") and len(log) == 1 + 2 * (2 + 1)


@pytest.mark.slow
def test_the_best_copy_is_broadcast_and_copies_are_independent_of_their_order(tmp_path):
    """After one round the model is the best sample's copy, re-trained alone from the start: same weights."""
    from marginface.training.trainer import Trainer

    config = tiny_search(tmp_path, "one", rounds=1)
    state = run_search(config, progress=False)
    record = state.history[0]
    assert record["rewards"][record["best"]] == max(record["rewards"])
    best_theta = torch.tensor(record["samples"][record["best"]], dtype=torch.float64)
    alone = Trainer(dataclasses.replace(config.train, output_dir=str(tmp_path / "alone"))).setup()
    alone.loss.set_transform(**unpack(best_theta, config.search))
    train_copy(alone, 0, config.search.steps_per_round)
    saved = load_file(str(tmp_path / "one" / STATE_FILE))
    for key, value in alone.backbone.state_dict().items():
        assert torch.equal(saved[f"model.backbone.{key}"], value), key
    assert torch.equal(saved["model.loss.weight"], alone.loss.weight.detach())

    data = read_search(tmp_path / "one")  # the figure's numbers: round 0 is the identity, then the updated mean
    thetas = torch.deg2rad(torch.tensor(data["thetas_deg"], dtype=torch.float64))
    torch.testing.assert_close(torch.tensor(data["logit_curves"][0], dtype=torch.float64), 16.0 * torch.cos(thetas))
    assert len(data["logit_curves"]) == 2 and data["rewards"] == [record["rewards"]]
    assert plot_search(tmp_path / "one").is_file()


PRESETS = sorted((Path(__file__).resolve().parents[2] / "configs" / "search").glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_search_preset_parses_and_is_named_dataset_backbone_loss(path):
    config = load_search_config(path)
    assert config.train.model.backbone in path.stem and config.train.loss.name in path.stem
    assert config.train.steps == config.search.rounds * config.search.steps_per_round


def test_search_needs_the_samples_to_divide_over_the_torchrun_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match=r"search.samples \(2\) must be a multiple of the 3 torchrun processes"):
        run_search(tiny_search(tmp_path, "ddp"), progress=False)


def _search_worker(rank: int, world: int, port: int, config_path: str) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from marginface.training.distributed import shutdown

    run_search(load_search_config(config_path), progress=False)
    shutdown()


@pytest.mark.slow
def test_one_sample_per_torchrun_rank_equals_the_one_process_search(tmp_path):
    """2 gloo processes x 1 copy each (B = 2, 2 rounds) == 1 process training both copies in turn: the same
    samples, rewards, mean, and every saved weight and optimizer tensor (the winner broadcast from its rank)."""
    from tests.training.test_trainer import free_port

    torch.set_num_threads(1)
    tiny_search(tmp_path, "ranks", seed=2)  # writes ranks.yaml
    torch.multiprocessing.spawn(_search_worker, args=(2, free_port(), str(tmp_path / "ranks.yaml")), nprocs=2)
    one = run_search(tiny_search(tmp_path, "one", seed=2), progress=False)
    a, b = load_file(str(tmp_path / "one" / STATE_FILE)), load_file(str(tmp_path / "ranks" / STATE_FILE))
    assert a.keys() == b.keys() and len(a) > 100
    for key in a:
        assert torch.equal(a[key], b[key]), key
    history = read_search(tmp_path / "ranks")
    assert history["rewards"] == [rec["rewards"] for rec in one.history]
    # Which copy wins depends on arithmetic the test does not control; the invariant is that both searches pick
    # the same one in every round (the weights above are the winner's, broadcast from its rank).
    with safe_open(str(tmp_path / "ranks" / STATE_FILE), framework="pt") as handle:
        ranks_history = json.loads(handle.metadata()["history"])
    assert [rec["best"] for rec in ranks_history] == [rec["best"] for rec in one.history] and one.round == 2
    assert (tmp_path / "ranks" / "search_log.csv").read_text() == (tmp_path / "one" / "search_log.csv").read_text()


def test_search_config_errors_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="loss.name 'amlfs'"):
        values = {**TINY, "loss": {"name": "arcface"}}
        (tmp_path / "a.yaml").write_text(yaml.safe_dump(values))
        load_search_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="validation set"):
        values = {**TINY, "validation": {"synthetic_pairs": 0}}
        (tmp_path / "b.yaml").write_text(yaml.safe_dump(values))
        load_search_config(tmp_path / "b.yaml")
    with pytest.raises(ConfigError, match="search.samples"):
        tiny_search(tmp_path, "c", samples=1)
    with pytest.raises(FileNotFoundError, match="configs/"):
        load_search_config(tmp_path / "missing.yaml")


def test_cli_search_reports_a_bad_config_in_one_line(tmp_path, capsys):
    from marginface.cli import main

    assert main(["search", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "configs/" in capsys.readouterr().err


def test_the_from_scratch_test_set_is_people_the_search_never_saw(tmp_path):
    """Synthetic test identities are a block after the reward's: no image equals a training or reward image."""
    from marginface.data.synthetic import synthetic_splits
    from marginface.experiments.search import search_test_sets

    config = tiny_search(tmp_path, "sets")
    (name, test_images, issame), = search_test_sets(config)
    data, val = config.train.data, config.train.validation
    train, val_images, _ = synthetic_splits(data.synthetic_identities, val.synthetic_identities,
                                            data.synthetic_images_per_identity, val.synthetic_pairs, 0)
    assert name == "synthetic_test" and test_images.shape == val_images.shape and len(issame) == val.synthetic_pairs
    seen = torch.cat([val_images, torch.stack([train[i][0] for i in range(len(train))])]).flatten(1)
    assert torch.cdist(test_images.flatten(1), seen).min() > 1.0  # far from every image the search trained or scored


def test_a_reward_set_cannot_be_the_test_set(tmp_path):
    from marginface.experiments.search import search_test_sets

    config = tiny_search(tmp_path, "leak")
    config.train.validation.bins = [str(tmp_path / "lfw.bin")]
    with pytest.raises(ConfigError, match="never saw"):
        search_test_sets(config, [str(tmp_path / "." / "lfw.bin")])


@pytest.mark.slow
def test_from_scratch_reports_the_test_accuracy_of_each_final_model(tmp_path):
    """retrain.json's test accuracies (each final model's, and the search's own model's) = the saved weights
    embedded and scored again, independently."""
    from marginface.backbones import create
    from marginface.evaluation.embed import embed_tensor, load_backbone
    from marginface.evaluation.verification import evaluate_interleaved
    from marginface.experiments.search import compare_from_scratch, search_test_sets

    no_search = compare_from_scratch(tiny_search(tmp_path, "nosearch"), identity_mean(TINY_SETTINGS) + 0.1,
                                     seeds=[0], steps=1, progress=False)
    assert no_search["search_model"] is None
    config = tiny_search(tmp_path, "scratch")
    state = run_search(config, progress=False)
    result = compare_from_scratch(config, state.mean, seeds=[0], steps=2, progress=False)
    assert result["test_sets"] == ["synthetic_test"]
    (_, images, issame), = search_test_sets(config)

    def score(backbone):
        return float(evaluate_interleaved(embed_tensor(backbone, images, batch_size=20, flip=True, device="cpu"),
                                          issame).accuracy.mean)

    for name in ("searched", "softmax"):
        kinds = result["results"][name]
        assert set(kinds) == {"validation", "test"} and kinds["test"]["std"] == 0.0
        final = tmp_path / "scratch" / "retrain" / f"{name}_seed0" / "checkpoints" / "step_00000002"
        assert kinds["test"]["accuracies"][0] == score(load_backbone("mobilefacenet", final / "model.safetensors", 32))
    saved = load_file(str(tmp_path / "scratch" / STATE_FILE))
    backbone = create("mobilefacenet", embedding_size=32)
    backbone.load_state_dict({k[len("model.backbone."):]: v for k, v in saved.items()
                              if k.startswith("model.backbone.")})
    assert result["search_model"]["steps"] == 2 and result["search_model"]["test"] == score(backbone)


def test_test_bin_takes_one_path_and_leaves_the_overrides_alone():
    import argparse

    from marginface.cli.search import add_search

    parser = argparse.ArgumentParser()
    add_search(parser.add_subparsers())
    args = parser.parse_args(["search", "--config", "c.yaml", "--test-bin", "lfw.bin", "optim.lr=0.05",
                              "--test-bin", "cfp_fp.bin"])
    assert args.test_bins == ["lfw.bin", "cfp_fp.bin"] and args.overrides == ["optim.lr=0.05"]
