"""One job of a study in a child process: train a run, or evaluate its final checkpoint.

``python -m marginface.experiments.study_worker JOB`` where ``JOB`` is a JSON object (what :mod:`study` passes):

- ``{"task": "train", "preset": ..., "overrides": [...]}``: the library calls behind ``marginface train --config
  PRESET OVERRIDES`` (load the config, ``Trainer.setup()``, ``fit()``, the loss curve) — the same run folder,
  resume and output.
- ``{"task": "evaluate", "checkpoint": ..., "bins": [...], "flip": bool, "device": ..., "result": PATH}``: the
  verification of ``marginface eval --checkpoint C --bins ... --json`` (10-fold accuracy, ROC, TAR@FAR per set);
  its JSON (``evaluation.report.to_json`` plus ``roc_plot``) is written atomically to ``PATH`` for the study to read,
  and printed, as the command prints it.

A child process per job keeps the study's lanes parallel with a fixed number of intra-op threads each (torch reads
``OMP_NUM_THREADS`` at import). Exit status as ``marginface``'s: 0, 2 for an error the user can fix (its message on
stderr in one line, ``marginface train: ...``), 130 / 143 when stopped by a signal (the run keeps a checkpoint of
its last step), 1 with a traceback for anything else.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from marginface.errors import is_user_error


def train(preset: str, overrides: Sequence[str]) -> dict[str, Any]:
    """Train (or resume) the run ``preset`` + ``overrides`` describe, as ``marginface train`` does; returns
    ``Trainer.fit``'s final and best validation results."""
    from marginface.training import presets
    from marginface.training.config import load_config
    from marginface.training.trainer import train as train_run

    return train_run(load_config(presets.resolve_config(preset), list(overrides)))


def evaluate(checkpoint: str, bins: Sequence[str], flip: bool, device: str) -> dict[str, Any]:
    """Verification of ``checkpoint`` on ``bins`` (``.bin`` sets, 128 images per forward): the JSON object
    ``marginface eval --checkpoint C --bins ... --json --roc ""`` prints."""
    from marginface.evaluation import report, verification

    sets = verification.evaluate_cli_sets(checkpoint=checkpoint, backbone=None, bins=list(bins), flip=flip,
                                          device=device)
    return {**report.to_json(Path(checkpoint).stem, sets, []), "roc_plot": None}


def run_job(job: dict[str, Any]) -> None:
    """Do one job (see the module docstring)."""
    from marginface.files import atomic_write_text

    if job.get("task") == "train":
        train(job["preset"], job["overrides"])
    elif job.get("task") == "evaluate":
        result = evaluate(job["checkpoint"], job["bins"], job["flip"], job["device"])
        text, path = json.dumps(result, indent=2), Path(job["result"])
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        print(text)
    else:
        raise ValueError(f"study job task {job.get('task')!r}: use 'train' or 'evaluate'")


def main(argv: Sequence[str]) -> int:
    """Run the job ``argv[0]`` (JSON); the exit status of the module docstring."""
    job = json.loads(argv[0])
    command = {"train": "marginface train", "evaluate": "marginface eval"}.get(job.get("task"), "study job")
    try:
        run_job(job)
    except Exception as err:
        if not is_user_error(err):
            raise
        print(f"{command}: {err or type(err).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # the trainer's stop request (TrainingInterrupted) carries 130 or 143
        print(f"{command}: interrupted" + (f": {stop}" if str(stop) else ""), file=sys.stderr)
        return int(getattr(stop, "exit_code", 130))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
