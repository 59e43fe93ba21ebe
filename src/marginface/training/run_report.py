"""What ``marginface train`` prints: the start-up banner, validation results as they happen, and the bookkeeping
that keeps img/s and the ETA about training steps only (validation and checkpoint time excluded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _data_line(config: Any, identities: int, images: int) -> str:
    data = config.data
    where = (f"synthetic (seed {data.synthetic_seed})" if data.source == "synthetic"
             else f"{data.source} {data.path}")
    return f"{where}: {identities:,} identities, {images:,} images"


def banner(config: Any, identities: int, images: int, device: str, world_size: int, step: int,
           resumed_from: Path | None, changes: list[Any]) -> str:
    """The start-up summary: data, model and loss, device, schedule, precision, batch, validation, output, start.

    Args:
        config: the run's :class:`~marginface.training.config.TrainConfig` (in steps).
        identities, images: what the data holds.
        device: e.g. ``cpu`` / ``cuda``; ``world_size`` processes.
        step, resumed_from: the step training starts at and the checkpoint it came from (None: a new run).
        changes: the :class:`~marginface.training.run_checks.Change` list accepted for this start.
    """
    c = config
    epochs = c.steps * c.batch_size / max(images, 1)
    processes = f" x {world_size} processes" if world_size > 1 else ""
    params = ", ".join(f"{k}={v}" for k, v in c.loss.params.items()) or "defaults"
    every = c.validation.every
    sets = [*(["synthetic held-out pairs"] if c.validation.synthetic_pairs else []), *map(
        lambda b: Path(b).name, c.validation.bins)]
    validation = (f"{', '.join(sets)}, " + (f"every {every} steps" if every else "at the end")) if sets else "none"
    start = f"step {step} of {c.steps}, resumed from {resumed_from}" if resumed_from else "step 0 (new run)"
    lines = [
        f"train  {c.output_dir}",
        f"  data        {_data_line(c, identities, images)}",
        f"  model       {c.model.backbone}, {c.model.embedding_size}-d; loss {c.loss.name} ({params}), "
        f"head {c.loss.head}",
        f"  device      {device}{processes}, precision {c.precision}",
        f"  schedule    {c.steps:,} steps of batch {c.batch_size} (~{epochs:.2f} epochs), lr {c.optim.lr}"
        + (f", x{c.optim.gamma} at {c.optim.milestones}" if c.optim.milestones else ""),
        f"  validation  {validation}",
        f"  output      {c.output_dir} (checkpoint every {c.checkpoint_every} steps)",
        f"  start       {start}",
    ]
    why = (lambda ch: ch.kind) if resumed_from else (lambda ch: "no checkpoint: new run, config.json replaced")
    lines += [f"  changed     {ch.key}: {ch.old} -> {ch.new} ({why(ch)})" for ch in changes[:8]]
    if len(changes) > 8:
        lines.append(f"  changed     ... and {len(changes) - 8} more (all in history.jsonl)")
    return "\n".join(lines)


def validation_line(step: int, results: dict[str, float], best: bool) -> str:
    """``step 50: validation synthetic_heldout 91.33% (best so far)``."""
    values = ", ".join(f"{name} {100 * value:.2f}%" for name, value in results.items())
    return f"step {step}: validation {values}" + (" (best so far)" if best else "")


def exclude_pause(bar: Any, seconds: float) -> None:
    """Shift a tqdm bar's clocks by ``seconds`` so its rate and ETA ignore a pause (validation, checkpoint)."""
    if seconds > 0 and not getattr(bar, "disable", True):
        bar.start_t += seconds
        bar.last_print_t += seconds
