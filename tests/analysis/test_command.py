"""`marginface plot KIND`: each kind writes its PNG and CSV; bad input is one clear error."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from marginface.cli import main


@pytest.mark.parametrize("kind", ["target-logit", "boundaries", "significance"])
def test_loss_figures_write_png_and_csv(tmp_path, capsys, kind):
    out = tmp_path / f"{kind}.png"
    assert main(["plot", kind, "--out", str(out), "--loss", "arcface:margin=0.5", "--loss", "cosface",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(report["files"]) == sorted([str(out), str(out.with_suffix(".csv"))])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size < 200_000
    rows = list(csv.reader(out.with_suffix(".csv").open()))
    assert len(rows) > 10


def test_target_logit_csv_holds_the_curve(tmp_path, capsys):
    out = tmp_path / "t.png"
    main(["plot", "target-logit", "--out", str(out), "--loss", "cosface:margin=0.35"])
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    theta = np.array([float(r["theta_deg"]) for r in rows])
    values = np.array([float(r["cosface(margin=0.35)"]) for r in rows])
    assert theta[0] == 20 and theta[-1] == 100
    np.testing.assert_allclose(values, np.cos(np.radians(theta)) - 0.35, atol=1e-9)


def test_toy_command_writes_features_of_the_requested_dimension(tmp_path, capsys):
    out = tmp_path / "toy.png"
    assert main(["plot", "toy", "--dim", "3", "--identities", "3", "--images", "4", "--image-size", "8",
                 "--steps", "2", "--loss", "softmax", "--loss", "sphereface:margin=2", "--out", str(out),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "spread_deg softmax" in report and out.is_file()
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert len(rows) == 2 * 12 and set(rows[0]) == {"loss", "label", "f0", "f1", "f2"}
    assert main(["plot", "toy", "--image-size", "12", "--out", str(out)]) == 2


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["plot", "target-logit", "--out", str(tmp_path / "x.png"), "--loss", "arcfase"]) == 2
    assert "unknown loss" in capsys.readouterr().err
    assert main(["plot", "boundaries", "--out", str(tmp_path / "x.svg")]) == 2
    assert "ending in .png" in capsys.readouterr().err
    assert main(["plot", "theta", "--run", str(tmp_path / "missing")]) == 2
    assert main(["plot", "target-logit-training", "--run", str(tmp_path)]) == 2


@pytest.fixture
def tiny_run(tmp_path):
    """A 3-step run with the theta callback on and a checkpoint at every step (one thread: fast on busy CPUs)."""
    import torch

    from marginface.training.config import load_config
    from marginface.training.trainer import Trainer

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    run = tmp_path / "run"
    Trainer(load_config(None, [
        "model.backbone=mobilefacenet", "model.embedding_size=16", "data.synthetic_identities=4",
        "data.synthetic_images_per_identity=2", "batch_size=4", "steps=3", "log_every=1", "device=cpu",
        "checkpoint_every=1", "optim.lr=0.05", "analysis.theta_every=1", f"output_dir={run}"])).setup().fit()
    yield run
    torch.set_num_threads(before)


@pytest.mark.slow
def test_run_figures_from_the_log_and_from_checkpoints(tiny_run, capsys):
    assert main(["plot", "theta", "--run", str(tiny_run), "--source", "log", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["steps"] == [0, 1, 2]
    rows = list(csv.DictReader((tiny_run / "theta_log.csv").open()))
    for step in (0, 1, 2):
        assert sum(int(r["count"]) for r in rows if r["angle"] == "theta_y" and r["step"] == str(step)) == 4
    assert main(["plot", "theta", "--run", str(tiny_run), "--steps", "1", "3", "--images", "6", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = list(csv.DictReader((tiny_run / "theta_checkpoints.csv").open()))
    assert sum(int(r["count"]) for r in rows if r["angle"] == "theta_nn" and r["step"] == "3") == 6
    assert main(["plot", "target-logit-training", "--run", str(tiny_run)]) == 0
    assert (tiny_run / "target_logit_training.png").is_file()
    assert main(["plot", "theta", "--run", str(tiny_run), "--steps", "7"]) == 2  # no such checkpoint
