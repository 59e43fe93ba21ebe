"""The demo's run folder: figures of its own run and an HTML report that references only files that exist."""

from __future__ import annotations

import pytest
import torch

from marginface.analysis.report import referenced_files, write_report
from marginface.experiments.demo import DemoTrainer, _RenderedOnce, demo_config, write_demo_figures
from marginface.training.config import load_config


@pytest.mark.slow
def test_demo_report_references_only_existing_files(tmp_path):
    before_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny network on shared cores
    try:
        config = load_config(None, [
            "model.backbone=mobilefacenet", "model.embedding_size=16", "data.synthetic_identities=4",
            "data.synthetic_images_per_identity=4", "batch_size=8", "steps=3", "log_every=1", "device=cpu",
            "checkpoint_every=3", "optim.lr=0.01", "analysis.theta_every=1", "validation.synthetic_pairs=20",
            "validation.synthetic_identities=4", f"output_dir={tmp_path}"])
        trainer = DemoTrainer(config).setup()
        trainer.dataset = _RenderedOnce(trainer.dataset)
        trainer.validate()
        before = trainer.verification["synthetic_heldout"]
        trainer.fit()
        report = write_demo_figures(trainer, before, trainer.verification["synthetic_heldout"], 1.0)
    finally:
        torch.set_num_threads(before_threads)
    files = referenced_files(report)
    assert {"roc.png", "theta.png", "target_logit_training.png", "target_logit.png"} <= set(files)
    assert all((tmp_path / f).is_file() for f in files), files


def test_report_leaves_out_missing_figures(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    report = write_report(tmp_path, "t <x>", {"k": "v & w"}, [("A", "a.png"), ("B", "missing.png")])
    assert referenced_files(report) == ["a.png"]
    assert "not drawn: missing.png" in report.read_text() and "t &lt;x&gt;" in report.read_text()


def test_rendered_once_returns_the_same_pixels():
    from marginface.data.synthetic import SyntheticFaces

    faces = SyntheticFaces(2, 2, seed=3)
    cached = _RenderedOnce(faces)
    assert torch.equal(cached[3][0], faces[3][0]) and torch.equal(cached[3][0], cached[3][0])


def test_demo_steps_override_keeps_a_valid_schedule():
    config = demo_config("x", steps=40)
    assert config.steps == 40 and config.optim.schedule == "cosine" and config.analysis.theta_every > 0
    assert config.optim.warmup_steps < config.steps  # the cosine decays over the steps after the warm-up
    assert demo_config("x", steps=5).optim.warmup_steps == 0  # `marginface demo --steps 5` is a valid config


@pytest.fixture
def tiny_demo(monkeypatch):
    """The demo shrunk to seconds: 4 identities, 20 held-out pairs, D=16, no figures (they have their own test)."""
    from marginface.experiments import demo

    small = {**demo.DEMO, "data": {**demo.DEMO["data"], "synthetic_identities": 4, "synthetic_images_per_identity": 4},
             "model": {"backbone": "mobilefacenet", "embedding_size": 16}, "batch_size": 8, "log_every": 1,
             "validation": {**demo.DEMO["validation"], "synthetic_pairs": 20, "synthetic_identities": 4},
             "analysis": {"theta_every": 0}}
    monkeypatch.setattr(demo, "DEMO", small)
    monkeypatch.setattr(demo, "write_demo_figures", lambda trainer, *a: write_report(trainer.run_dir, "t", {}, []))
    before_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield demo
    torch.set_num_threads(before_threads)


@pytest.mark.slow
def test_demo_stopped_by_sigterm_resumes_with_the_same_command(tiny_demo, tmp_path, monkeypatch, capsys):
    import os
    import signal

    from marginface.cli import main
    from marginface.training.trainer import Trainer

    run = tmp_path / "demo"
    command = ["demo", "--output-dir", str(run), "--steps", "6"]
    step = Trainer.train_step

    def stop_at_step_3(self, images, labels):
        value = step(self, images, labels)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID`: the stop handler checkpoints step 3
        return value

    monkeypatch.setattr(Trainer, "train_step", stop_at_step_3)
    assert main(command) == 143
    first = capsys.readouterr()
    assert "run the same command to resume from it" in first.err
    assert tiny_demo.demo_state(run) == "interrupted"
    monkeypatch.setattr(Trainer, "train_step", step)
    assert main(command) == 0
    second = capsys.readouterr().out
    assert f"start       step 3 of 6, resumed from {run / 'checkpoints' / 'step_00000003'}" in second
    before = [line for line in first.out.splitlines() if "before training" in line]
    assert before and before == [line for line in second.splitlines() if "before training" in line]
    assert "after 6 steps" in second and tiny_demo.demo_state(run) == "complete"
    # a finished demo is shown again from scratch, not trained on
    assert main(command) == 0
    third = capsys.readouterr().out
    assert f"{run} holds a finished demo: starting a new one there" in third and "step 0 (new run)" in third
    # an interrupted demo asked for another number of steps says how to resume it or start over
    monkeypatch.setattr(Trainer, "train_step", stop_at_step_3)
    assert main(command + ["--fresh"]) == 143
    capsys.readouterr()
    monkeypatch.setattr(Trainer, "train_step", step)
    assert main(["demo", "--output-dir", str(run), "--steps", "8"]) == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        f"marginface demo: {run} holds an interrupted demo of 6 steps; this one asks for 8: run marginface demo "
        "--steps 6 to resume it, or add --fresh to start over")


def test_loss_curve_shows_a_lone_validation_point_clear_of_the_legend_on_a_fixed_axis(tmp_path, monkeypatch):
    """The demo's one validation point sat under its own legend, on an axis stretched to 0.86-0.94 around it."""
    plt = pytest.importorskip("matplotlib.pyplot")
    from marginface.training.trainer import plot_loss_curve

    rows = [f"{s},loss,{10 - s / 50}" for s in range(10, 260, 10)] + ["250,val_synthetic_heldout,0.9017"]
    (tmp_path / "log.csv").write_text("step,key,value\n" + "\n".join(rows) + "\n")
    figures = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    assert plot_loss_curve(tmp_path) == tmp_path / "loss_curve.png" and (tmp_path / "loss_curve.png").is_file()
    fig = figures[0]
    fig.canvas.draw()
    accuracy_axis = fig.axes[1]
    assert accuracy_axis.get_ylim() == (0.5, 1.0)
    x, y = accuracy_axis.transData.transform((250, 0.9017))
    legend = fig.legends[0].get_window_extent()
    assert not legend.contains(x, y) and accuracy_axis.get_window_extent().contains(x, y)
    for axis in fig.axes:  # no legend inside the axes either
        assert axis.get_legend() is None
    assert any(t.get_text() == "90.2%" for t in accuracy_axis.texts)  # the value is written beside its point


def test_report_shows_figures_at_their_own_size(tmp_path):
    """report.html squeezed every figure into 520 px: the 1,040 px theta figure's text became ~6 px."""
    import re

    from PIL import Image

    from marginface.analysis.report import png_size

    Image.new("RGB", (1040, 380)).save(tmp_path / "wide.png")
    Image.new("RGB", (600, 420)).save(tmp_path / "narrow.png")
    page = write_report(tmp_path, "t", {}, [("wide", "wide.png"), ("narrow", "narrow.png")]).read_text()
    assert png_size(tmp_path / "wide.png") == (1040, 380)
    assert 'src="wide.png" alt="wide" width="1040" height="380"' in page
    assert 'src="narrow.png" alt="narrow" width="600" height="420"' in page
    caps = [int(v) for v in re.findall(r"(?:figure|img)\{[^}]*max-width:(\d+)px", page)]
    body = int(re.search(r"body\{[^}]*max-width:(\d+)px", page).group(1))
    assert all(cap >= 1040 for cap in caps) and body - 2 * 16 >= 1040  # room for the widest figure at 1:1
