"""``marginface demo``: train a small face model on synthetic identities in a few minutes on 2 CPU cores.

Nothing to download: the identities are rendered on the fly (``marginface.data.synthetic``). The demo verifies
held-out synthetic identities (disjoint from training) before and after training, and leaves a run folder with
the checkpoint, the CSV/TensorBoard logs and ``loss_curve.png``.
"""

from __future__ import annotations

from typing import Any

from marginface.training.config import TrainConfig, config_from_dict

DEMO: dict[str, Any] = {
    "data": {"source": "synthetic", "synthetic_identities": 100, "synthetic_images_per_identity": 24,
             "synthetic_seed": 0},
    "model": {"backbone": "mobilefacenet", "embedding_size": 128},
    "loss": {"name": "arcface", "params": {"scale": 16.0, "margin": 0.3}},
    "optim": {"lr": 0.1, "milestones": [90, 130], "warmup_steps": 10},
    "validation": {"synthetic_pairs": 600, "synthetic_identities": 60, "every": 50, "batch_size": 100},
    "batch_size": 32,
    "steps": 150,
    "log_every": 10,
    "checkpoint_every": 50,
    "device": "cpu",
}


def demo_config(output_dir: str, steps: int | None = None) -> TrainConfig:
    values = {**DEMO, "output_dir": output_dir}
    if steps is not None:
        values["steps"] = steps
        values["optim"] = {**DEMO["optim"], "milestones": [int(steps * 0.6), int(steps * 0.85)]}
        values["validation"] = {**DEMO["validation"], "every": max(1, steps // 4)}
    return config_from_dict(values)


def run_demo(output_dir: str = "runs/demo", steps: int | None = None) -> dict[str, float]:
    """Train the demo model; returns held-out verification accuracy before and after training."""
    from marginface.training.trainer import Trainer, clear_run, plot_loss_curve

    clear_run(output_dir)
    trainer = Trainer(demo_config(output_dir, steps)).setup()
    before = trainer.validate()["synthetic_heldout"]
    print(f"held-out synthetic verification before training: {before:.2%}")
    results = trainer.fit()
    after = results["final"]["synthetic_heldout"]
    curve = plot_loss_curve(output_dir)
    print(f"held-out synthetic verification after {trainer.step} steps: {after:.2%} "
          f"(best {results['best'].get('mean_accuracy', after):.2%} at step {results['best'].get('step')})")
    print(f"run folder: {output_dir} (checkpoints/, log.csv, best.safetensors{', loss_curve.png' if curve else ''})")
    return {"before": before, "after": after}
