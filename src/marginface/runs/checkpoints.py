"""Writing one checkpoint folder of a run, never half-written.

A checkpoint is ``<run>/checkpoints/step_<N>/`` holding ``model.safetensors`` (keys ``backbone.*`` and ``loss.*``,
the model card in its header), ``optimizer.safetensors`` (optimizer tensors, RNG states, the head's sampler) and
``state.json``. It is written into ``step_<N>.tmp``, every file fsynced, and renamed into place (an atomic rename
on POSIX): a kill at any moment leaves either the old or the new checkpoint, never a torn one. What goes into the
files (optimizer flattening, RNG states) is the trainer's business (``training/checkpoint.py``); where they go and
how they land is this module's.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from marginface.files import atomic_write_text, fsync_dir, fsync_tree, respect_umask
from marginface.runs.layout import CHECKPOINTS, LATEST, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, step_name


def model_tensors(backbone: nn.Module, loss: nn.Module | None) -> dict[str, torch.Tensor]:
    """The weights of a run under ``backbone.*`` and ``loss.*`` (buffers included), contiguous, on the CPU."""
    out = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    if loss is not None:
        out.update({f"loss.{k}": v for k, v in loss.state_dict().items()})
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def load_model_tensors(weights: dict[str, torch.Tensor], backbone: nn.Module, loss: nn.Module | None) -> None:
    """Load ``backbone.*`` / ``loss.*`` tensors (what :func:`model_tensors` gives) into the modules, strictly."""
    backbone.load_state_dict({k[len("backbone."):]: v for k, v in weights.items() if k.startswith("backbone.")})
    if loss is not None:
        loss.load_state_dict({k[len("loss."):]: v for k, v in weights.items() if k.startswith("loss.")})


def write_checkpoint(run_dir: str | Path, step: int, model: dict[str, torch.Tensor],
                     training: dict[str, torch.Tensor], state: dict[str, Any],
                     metadata: dict[str, str] | None = None) -> Path:
    """The checkpoint folder's three files from tensors and state, atomically (see the module doc).

    ``run_dir`` is the folder whose ``checkpoints/`` receive the step (a shard's ``rank<k>/`` for k > 0).
    Returns the folder. A ``checkpoints/latest`` pointer is not written for new runs (the listing is the truth,
    ``RunDir.newest``); one left by a run written before is kept naming the newest step, so it never goes stale.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / step_name(step), root / f"{step_name(step)}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(model, str(tmp / MODEL_FILE), metadata=metadata)
    save_file(training, str(tmp / OPTIMIZER_FILE))
    for name in (MODEL_FILE, OPTIMIZER_FILE):
        respect_umask(tmp / name)
    (tmp / STATE_FILE).write_text(json.dumps(state))
    fsync_tree(tmp)
    if final.exists():  # a re-run of the same step after a resume: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    if (root / LATEST).is_file():  # an older run's pointer: keep it true for whoever still reads it
        atomic_write_text(root / LATEST, final.name)
    return final
