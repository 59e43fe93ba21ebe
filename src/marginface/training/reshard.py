"""Resuming a process from a saved step of any layout (the reading and re-cutting: ``runs/steps.py``).

:class:`~marginface.runs.steps.SavedStep` and :func:`~marginface.runs.steps.rewrite` moved to
``marginface.runs.steps``; they are re-exported here for one release.
"""

from __future__ import annotations

from typing import Any

import torch

from marginface.runs.layout import STEP_FOLDER  # noqa: F401  (moved to marginface.runs.layout; kept for one release)
from marginface.runs.steps import (  # noqa: F401  (moved to marginface.runs.steps; kept for one release)
    FILES,
    PER_PROCESS_PREFIXES,
    SavedStep,
    ShardFiles,
    rewrite,
    saved_layout,
    step_folder,
)
from marginface.training import checkpoint as ckpt
from marginface.training.placement import head_state


def load_for_process(saved: SavedStep, shards: int, shard: int, num_classes: int, backbone: torch.nn.Module,
                     loss: torch.nn.Module, head: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     optimizer_ids: dict[str, int]) -> dict[str, Any]:
    """Restore this process's backbone, loss rows, head sampler, optimizer and RNGs from ``saved`` (any layout);
    returns the state (``state.json`` of the re-cut shard)."""
    files = saved.files_for(shards, shard, num_classes, optimizer_ids)
    ckpt.load_model_tensors(files.model, backbone, loss)
    optimizer.load_state_dict(ckpt.unflatten_optimizer(files.training, files.state["optimizer"]))
    ckpt.set_rng_state(files.training, files.state["rng"])
    head_tensors = {k[5:]: v for k, v in files.training.items() if k.startswith("head.")}
    own = head_state(head).keys()
    if head_tensors.keys() & own:
        head.load_state_dict({k: v for k, v in head_tensors.items() if k in own}, strict=False)
    elif "head_rng" in files.state and getattr(head, "generator", None) is not None:  # older checkpoints
        head.generator.set_state(torch.tensor(files.state["head_rng"], dtype=torch.uint8))
    return files.state
