"""``marginface demo``: train a small face model on synthetic identities in a few minutes on 2 CPU cores.

Nothing to download: the identities are rendered on the fly (``marginface.data.synthetic``). The demo verifies
held-out synthetic identities (disjoint from training) before and after training, and leaves a run folder with
the checkpoint, the CSV/TensorBoard logs, ``loss_curve.png``, ``roc.png`` (before/after), the theta
distributions of its own training batches (``theta.png``, from the ``analysis.theta_every`` callback), its
target logit during training (``target_logit_training.png``), the target-logit curve of its loss
(``target_logit.png``) and ``report.html``, one page with all of them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from marginface.data.synthetic import SyntheticFaces
from marginface.errors import UserError
from marginface.runs.layout import LOSS_CURVE, TARGET_LOGIT_TRAINING, RunDir
from marginface.training.config import TrainConfig, config_from_dict
from marginface.training.trainer import Trainer

DEMO: dict[str, Any] = {
    "data": {"source": "synthetic", "synthetic_identities": 100, "synthetic_images_per_identity": 24,
             "synthetic_seed": 0},
    "model": {"backbone": "mobilefacenet", "embedding_size": 128},
    "loss": {"name": "arcface", "params": {"scale": 16.0, "margin": 0.3}},
    # AdamW + cosine (2026-12-03): 91.67% / 90.17% held-out in two runs of 250 steps vs 84-87% for SGD (five runs)
    # (docs/analysis.md, "The demo"); no weight decay on norms and biases
    "optim": {"name": "adamw", "lr": 0.004, "weight_decay": 0.05, "weight_decay_params": "weights",
              "schedule": "cosine", "warmup_steps": 10},
    # validated before and after only: every intermediate pass over the 1,200 held-out images costs ~25 steps
    "validation": {"synthetic_pairs": 600, "synthetic_identities": 60, "every": 0, "batch_size": 100},
    "analysis": {"theta_every": 10},
    # bf16 autocast + channels_last: 1.22 vs 1.54 CPU-s per step (fp32) on a CPU with AVX512-BF16 (2026-12-02)
    "precision": "bf16",
    "channels_last": True,
    "batch_size": 32,
    "steps": 250,
    "log_every": 10,
    "checkpoint_every": 125,
    "device": "cpu",
}


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX512-BF16 / AMX); elsewhere bf16 is emulated and slower."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private torch op: absent or failing means "don't rely on it"
        return False


def demo_config(output_dir: str, steps: int | None = None) -> TrainConfig:
    """The demo's configuration; bf16 only where the CPU computes it natively (fp32 otherwise)."""
    values = {**DEMO, "output_dir": output_dir}
    if not cpu_has_fast_bf16():
        values["precision"] = "fp32"
    if steps is not None:
        values["steps"] = steps
        # the cosine needs its warm-up shorter than the run: 10 of 250 steps, scaled for a shorter --steps
        values["optim"] = {**DEMO["optim"], "warmup_steps": min(DEMO["optim"]["warmup_steps"], steps // 10)}
        values["checkpoint_every"] = max(1, steps // 3)
    return config_from_dict(values)


class _RenderedOnce(SyntheticFaces):
    """The training identities, each image rendered once and kept (uint8, ~90 MB for the demo's 2,400):
    from the second epoch on, a batch costs no rendering."""

    def __init__(self, faces: SyntheticFaces) -> None:
        super().__init__(faces.num_identities, faces.images_per_identity, faces.seed, faces.image_size,
                         faces.transform, faces.identity_offset)
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def render(self, identity: int, image_index: int) -> np.ndarray:
        key = (identity, image_index)
        if key not in self._cache:
            self._cache[key] = super().render(identity, image_index)
        return self._cache[key]


#: The demo trains with the plain :class:`Trainer` (its own dataset through ``Trainer(dataset=...)``); this name of
#: its former subclass is kept for one release.
DemoTrainer = Trainer


def demo_dataset(config: TrainConfig):  # noqa: ANN201 (a torch Dataset)
    """The demo's training data: ``config.data``, its synthetic images rendered once and kept."""
    from marginface.training.data import build_dataset

    dataset = build_dataset(config.data)
    return _RenderedOnce(dataset) if isinstance(dataset, SyntheticFaces) else dataset


#: The held-out embeddings of the untrained model (``(2N, D)`` float32), kept so that a resumed demo reports
#: the same "before training" accuracy and ROC as the uninterrupted run.
BEFORE_FILE = "before_training_embeddings.npy"
#: Written last: a run folder holding it is a finished demo, and ``marginface demo`` starts a new one there.
DONE_FILE = "report.html"


def demo_state(output_dir: str | Path) -> str:
    """``"new"`` (nothing to continue), ``"interrupted"`` (a checkpoint and the before-training embeddings, no
    report: the demo resumes) or ``"complete"`` (the report was written: the demo starts afresh)."""
    run = Path(output_dir)
    if (run / DONE_FILE).is_file():
        return "complete"
    if (run / BEFORE_FILE).is_file() and RunDir(run).newest() is not None:
        return "interrupted"
    return "new"


def _check_same_steps(output_dir: str | Path, config: TrainConfig) -> None:
    """An interrupted demo resumes only with its own number of steps (the cosine schedule depends on it)."""
    saved = RunDir(output_dir).read_config().get("steps")
    if saved != config.steps:
        raise UserError(f"{output_dir} holds an interrupted demo of {saved} steps; this one asks for "
                        f"{config.steps}: run marginface demo --steps {saved} to resume it, or add `fresh=True` to "
                        "start over")


def run_demo(output_dir: str = "runs/demo", steps: int | None = None, fresh: bool = False) -> dict[str, float]:
    """Train the demo model; returns held-out verification accuracy before and after training.

    An interrupted demo (Ctrl-C / SIGTERM checkpoint, no report yet) resumes from its checkpoint, as the stop
    message says; a finished one (``report.html`` written), or any run with ``fresh``, is deleted and started
    over: rerunning a finished demo means "show it again", not "train on".
    """
    from marginface.training.trainer import clear_run, plot_loss_curve

    start = time.perf_counter()
    state = "new" if fresh else demo_state(output_dir)
    config = demo_config(output_dir, steps)
    if state == "interrupted":
        _check_same_steps(output_dir, config)
    else:
        if state == "complete":
            print(f"{output_dir} holds a finished demo: starting a new one there")
        clear_run(output_dir)
    trainer = Trainer(config, dataset=demo_dataset(config)).setup()
    before_result = _before_training(trainer)
    before = float(before_result.accuracy.mean)
    print(f"held-out synthetic verification before training: {before:.2%}")
    results = trainer.fit()
    after = results["final"]["synthetic_heldout"]
    after_result = trainer.verification["synthetic_heldout"]  # the final validation's full result
    print(f"held-out synthetic verification after {trainer.step} steps: {after:.2%}")
    plot_loss_curve(output_dir)
    report = write_demo_figures(trainer, before_result, after_result, time.perf_counter() - start)
    print(f"run folder: {output_dir} (checkpoints/, log.csv, best.safetensors, figures); open {report}")
    return {"before": before, "after": after}


def _before_training(trainer: Trainer):  # noqa: ANN202 (VerificationResult)
    """The untrained model's held-out result: measured now on a new run, recomputed from the saved embeddings
    on a resumed one (its weights are no longer the untrained ones)."""
    from marginface.evaluation.verification import evaluate_interleaved

    path = trainer.run_dir / BEFORE_FILE
    _, _, issame = trainer.validation_sets[0]
    if trainer.step and path.is_file():
        return evaluate_interleaved(np.load(path, allow_pickle=False), issame, name="synthetic_heldout")
    evaluation = trainer.evaluate()
    np.save(path, evaluation.embeddings["synthetic_heldout"], allow_pickle=False)
    return evaluation.results["synthetic_heldout"]


def write_demo_figures(trainer: Trainer, before, after, seconds: float):
    """ROC, theta, target-logit figures and report.html in the run folder; returns the report's path.

    Figures need matplotlib (the plot extra); without it the report lists them as not drawn.
    """
    from marginface.analysis.report import write_report

    run, cfg = trainer.run_dir, trainer.config
    try:
        _draw(trainer, before, after)
    except ImportError as err:  # matplotlib is optional
        print(f"figures skipped: {err}")
    facts = {
        "held-out verification before training": f"{before.accuracy.mean:.2%} (10-fold, flip TTA)",
        f"held-out verification after {trainer.step} steps": f"{after.accuracy.mean:.2%}",
        "data": f"{cfg.data.synthetic_identities} synthetic identities x {cfg.data.synthetic_images_per_identity} "
                f"images; {cfg.validation.synthetic_pairs} pairs of {cfg.validation.synthetic_identities} "
                "held-out identities",
        "model": f"{cfg.model.backbone}, D={cfg.model.embedding_size}, {cfg.loss.name} {cfg.loss.params}",
        "training": f"{trainer.step} steps of {cfg.batch_size}, {cfg.optim.name} lr {cfg.optim.lr}, "
                    f"{cfg.optim.schedule} schedule, {cfg.precision}",
        "wall time (setup, training, validation)": f"{seconds:.0f} s",
    }
    figures = [("training loss (and final held-out accuracy)", LOSS_CURVE),
               ("ROC on the held-out pairs, before and after training", "roc.png"),
               ("θ_y and nearest non-target angle of the training batches, start / middle / end", "theta.png"),
               ("mean target logit and θ_y during training", TARGET_LOGIT_TRAINING),
               ("the target logit of the demo's loss against θ (scale removed), softmax for reference",
                "target_logit.png")]
    return write_report(run, "marginface demo", facts, figures)


def _draw(trainer: Trainer, before, after) -> None:
    from dataclasses import replace

    from marginface.analysis.curves import LossSpec
    from marginface.analysis.figures import target_logit_figure, theta_figure, training_figure
    from marginface.evaluation.verification import plot_roc

    run = trainer.run_dir
    plot_roc([replace(before, name="before training"), replace(after, name=f"after {trainer.step} steps")],
             run / "roc.png")
    theta_figure(run, run / "theta.png", source="log")
    training_figure([run], RunDir(run).target_logit_training)
    spec = LossSpec(trainer.config.loss.name, dict(trainer.config.loss.params))
    target_logit_figure([LossSpec("softmax"), spec], run / "target_logit.png", 0.0, 180.0)
