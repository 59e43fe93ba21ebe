"""The figures of ``marginface plot`` as library functions (numbers -> CSV + PNG), shared with the demo."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from marginface.analysis import angles, draw, runs
from marginface.analysis.curves import LossSpec, target_logit_curve
from marginface.runs.layout import RunDir


def target_logit_figure(specs: Sequence[LossSpec], out: str | Path, theta_min: float = 20.0,
                        theta_max: float = 100.0) -> list[Path]:
    """Target logit / scale against theta for each loss: ``out`` (.png) and its .csv. Returns both paths."""
    if not 0 <= theta_min < theta_max <= 180:
        raise ValueError(f"need 0 <= theta min < theta max <= 180 degrees, got {theta_min}, {theta_max}")
    theta = np.linspace(theta_min, theta_max, 161)
    curves = {spec.label: (theta, target_logit_curve(spec, theta)) for spec in specs}
    rows = [[float(t), *(float(c[1][i]) for c in curves.values())] for i, t in enumerate(theta)]
    return [draw.write_csv(Path(out).with_suffix(".csv"), ["theta_deg", *curves], rows),
            draw.draw_curves(curves, out, xlabel="θ (degrees)", ylabel="target logit / scale",
                             title="target logit curves")]


def theta_figure(run: str | Path, out: str | Path, source: str = "checkpoints", steps: list[int] | None = None,
                 images: int = 1000) -> tuple[list[Path], dict]:
    """theta_y and nearest non-target histograms of a run at several steps, from its checkpoints (embedding
    ``images`` training images each) or from what the trainer logged (``analysis.theta_every``)."""
    edges = angles.bin_edges()
    if source == "log":
        log_path = RunDir(run).log
        if not log_path.is_file():
            raise FileNotFoundError(f"{log_path} is missing: is {run} a marginface run folder?")
        logged = RunDir(run).read_log()
        per_step = {name: angles.histogram_from_log(logged, name) for name in ("theta_y", "theta_nn")}
        if not per_step["theta_y"]:
            raise ValueError(f"{log_path} has no theta histograms: train with analysis.theta_every=N")
        chosen = runs.pick_steps(list(per_step["theta_y"]), steps)
        hists = {name: {s: per_step[name][s] for s in chosen} for name in per_step}
        where = "training batches (logged)"
    elif source == "checkpoints":
        chosen = runs.pick_steps(list(runs.list_checkpoints(run)), steps)
        hists = {"theta_y": {}, "theta_nn": {}}
        for step in chosen:
            t_y, t_nn = runs.checkpoint_angles(run, step, images)
            hists["theta_y"][step] = angles.angle_histogram(t_y)
            hists["theta_nn"][step] = angles.angle_histogram(t_nn)
        where = f"{images} training images per checkpoint"
    else:
        raise ValueError(f"source must be 'checkpoints' or 'log', got {source!r}")
    rows = [[name, step, float(edges[i]), float(edges[i + 1]), int(counts[i])]
            for name, by_step in hists.items() for step, counts in by_step.items() for i in range(len(counts))]
    panels = {"θ_y (to the own centre)": {f"step {s}": c for s, c in hists["theta_y"].items()},
              "nearest non-target angle": {f"step {s}": c for s, c in hists["theta_nn"].items()}}
    written = [draw.write_csv(Path(out).with_suffix(".csv"), ["angle", "step", "bin_lo_deg", "bin_hi_deg", "count"],
                              rows),
               draw.draw_histograms(panels, edges, out, f"{Path(run).name}: {where}")]
    centres = (edges[:-1] + edges[1:]) / 2
    numbers = {f"theta_y_mean_step_{s}": round(float((c * centres).sum() / max(c.sum(), 1)), 2)
               for s, c in hists["theta_y"].items()}
    return written, {**numbers, "steps": [int(s) for s in chosen]}


def training_figure(run_dirs: Sequence[str | Path], out: str | Path) -> list[Path]:
    """Mean target logit and theta_y over the steps of one or several runs (from their log.csv)."""
    series = {}
    for run in run_dirs:
        if not RunDir(run).log.is_file():
            raise FileNotFoundError(f"{RunDir(run).log} is missing: is {run} a marginface run folder?")
        series[Path(run).name] = RunDir(run).read_log()
        if "theta_y_mean" not in series[Path(run).name]:
            raise ValueError(f"run {run}: log.csv has no theta_y_mean; train with analysis.theta_every=N")
    keys = ("theta_y_mean", "theta_y_p10", "theta_y_p50", "theta_y_p90", "theta_nn_mean", "target_logit_mean")
    rows = [[name, step, key, value] for name, s in series.items() for key in keys for step, value in s.get(key, [])]
    return [draw.write_csv(Path(out).with_suffix(".csv"), ["run", "step", "key", "value"], rows),
            draw.draw_training_series(series, out)]
