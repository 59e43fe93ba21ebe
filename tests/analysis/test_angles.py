"""Angles against a naive float64 loop, histograms against numpy and a hand count, and the trainer callback:
off by default, no extra forward pass, statistics logged every N steps."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from marginface import losses
from marginface.analysis import angles
from marginface.training.config import load_config
from marginface.training.trainer import Trainer, read_log


def naive_angles(weight: torch.Tensor, x: torch.Tensor, labels: torch.Tensor) -> tuple[list[float], list[float]]:
    """theta_y and nearest non-target angle (degrees) by a loop in float64 (max over sub-centres)."""
    w = weight.detach().double().reshape(weight.shape[0], -1, weight.shape[-1])
    out_y, out_nn = [], []
    for xi, yi in zip(x.double(), labels.tolist()):
        cos = [max(float(xi @ wk / (xi.norm() * wk.norm())) for wk in w[c]) for c in range(w.shape[0])]
        out_y.append(math.degrees(math.acos(max(-1.0, min(1.0, cos[yi])))))
        best = max(c for j, c in enumerate(cos) if j != yi)
        out_nn.append(math.degrees(math.acos(max(-1.0, min(1.0, best)))))
    return out_y, out_nn


@pytest.mark.parametrize("name", ["arcface", "softmax", "subcenter_arcface", "sphereface"])
def test_embedding_angles_match_a_naive_loop_across_class_blocks(monkeypatch, name):
    monkeypatch.setattr(angles, "CLASS_BLOCK", 3)  # 7 classes in blocks of 3, 3, 1
    loss = losses.create(name, embedding_size=5, num_classes=7)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        loss.weight.copy_(torch.randn(loss.weight.shape, generator=gen))
    x = torch.randn(9, 5, generator=gen) * 3
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 2, 6])
    theta_y, theta_nn = angles.embedding_angles(loss, x, labels)
    ref_y, ref_nn = naive_angles(loss.weight, x, labels)
    np.testing.assert_allclose(theta_y.numpy(), ref_y, atol=2e-3)  # float32 cosines near +-1: ~1e-3 degrees
    np.testing.assert_allclose(theta_nn.numpy(), ref_nn, atol=2e-3)


def test_histogram_counts_sum_to_the_samples_and_match_numpy_and_a_hand_count():
    values = torch.cat([torch.rand(997, dtype=torch.float64) * 180, torch.tensor([0.0, 5.0, 180.0, 175.0],
                                                                                  dtype=torch.float64)])
    counts = angles.angle_histogram(values)
    assert counts.sum() == len(values) and len(counts) == angles.HIST_BINS
    np.testing.assert_array_equal(counts, np.histogram(values.numpy(), bins=36, range=(0.0, 180.0))[0])
    hand = np.zeros(36, dtype=np.int64)
    for v in values.tolist():
        hand[min(int(v // 5.0), 35)] += 1  # 5-degree bins, [lo, hi); 180 falls in the last one
    np.testing.assert_array_equal(counts, hand)


def test_angle_statistics_quantiles_and_histogram_keys():
    gen = torch.Generator().manual_seed(0)
    t_y, t_nn = torch.rand(200, generator=gen) * 90, 90 + torch.rand(200, generator=gen) * 30
    stats = angles.angle_statistics(t_y, t_nn)
    assert stats["theta_y_p50"] == pytest.approx(float(np.quantile(t_y.numpy(), 0.5)), abs=1e-4)
    assert stats["theta_nn_p90"] == pytest.approx(float(np.quantile(t_nn.numpy(), 0.9)), abs=1e-4)
    assert stats["theta_y_mean"] == pytest.approx(float(t_y.mean()), abs=1e-5)
    assert sum(stats[f"theta_y_hist_{i:02d}"] for i in range(36)) == 200


def test_recorder_records_every_n_steps_pools_micro_batches_and_leaves_state_alone():
    loss = losses.create("sphereface", embedding_size=4, num_classes=5).train()
    step = {"now": 0}
    recorder = angles.ThetaRecorder(loss, 3, lambda: step["now"])
    handle = recorder.attach(loss)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 4, 0])
    for now in range(7):
        step["now"] = now
        loss(x[:3], y[:3])
        loss(x[3:], y[3:])  # two micro-batches of one step
        out = recorder.pop()
        if now % 3:
            assert out is None
        else:
            at, stats = out
            assert at == now and sum(stats[f"theta_y_hist_{i:02d}"] for i in range(36)) == 6
            assert "target_logit_mean" in stats
    assert int(loss.step) == 14  # only the 14 training forwards advanced SphereFace's lambda schedule
    handle.remove()


TINY = ["model.backbone=mobilefacenet", "model.embedding_size=16", "data.synthetic_identities=4",
        "data.synthetic_images_per_identity=2", "batch_size=4", "steps=3", "log_every=1", "device=cpu",
        "checkpoint_every=100", "optim.lr=0.05"]


def count_forwards(run_dir: Path, *extra: str) -> tuple[int, int, Trainer]:
    trainer = Trainer(load_config(None, [*TINY, f"output_dir={run_dir}", *extra])).setup()
    calls = {"backbone": 0, "head": 0}
    trainer.backbone.register_forward_hook(lambda *a: calls.__setitem__("backbone", calls["backbone"] + 1))
    trainer.model.head.register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))
    trainer.fit()
    return calls["backbone"], calls["head"], trainer


@pytest.fixture
def one_thread():
    """Two threads on two shared cores stall each other on a tiny network; one is several times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_theta_callback_is_off_by_default_and_adds_no_forward(tmp_path, one_thread):
    assert load_config(None, []).analysis.theta_every == 0
    off_b, off_h, off = count_forwards(tmp_path / "off")
    on_b, on_h, on = count_forwards(tmp_path / "on", "analysis.theta_every=2")
    assert off.theta_recorder is None and on.theta_recorder is not None
    assert (on_b, on_h) == (off_b, off_h)  # validation embeds too; the training forwards are the same
    assert not any(k.startswith("theta_") for k in read_log(tmp_path / "off"))
    logged = read_log(tmp_path / "on")
    assert [s for s, _ in logged["theta_y_mean"]] == [0, 2]  # the batches trained after 0 and 2 updates
    assert sum(v for k, series in logged.items() if k.startswith("theta_y_hist_") for s, v in series if s == 2) == 4
    assert "target_logit_mean" in logged


def test_theta_every_must_not_be_negative():
    with pytest.raises(ValueError, match="analysis.theta_every"):
        load_config(None, ["analysis.theta_every=-1"])
