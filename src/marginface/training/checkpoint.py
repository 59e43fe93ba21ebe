"""Checkpoints that resume exactly and are never half-written.

A checkpoint is a folder of the run (``<run>/checkpoints/step_<N>/``, see ``marginface.runs``) holding
- ``model.safetensors``: the backbone (keys ``backbone.*``) and the loss with its class centres and running
  state (keys ``loss.*``) — the file evaluation and export read;
- ``optimizer.safetensors``: every tensor of the optimizer state (momentum buffers) and the RNG states;
- ``state.json``: step, optimizer hyper-parameters, scheduler, grad-scaler and data-order state, Python/NumPy RNG.
This module turns the trainer's state into those tensors and back; ``marginface.runs.checkpoints`` writes the
folder (into ``step_<N>.tmp``, fsynced, renamed into place: a kill at any moment leaves either the old or the
new checkpoint, never a torn one) and ``marginface.runs.RunDir`` finds them. Nothing is unpickled on load.

**Every RNG a run draws from** is saved and restored: torch's global generator (dropout, initialisation), CUDA's
when initialised, Python's ``random`` and NumPy's global state, and the head's sampler generator (``head.*``). The
data order and flips are functions of ``(seed, step)`` (``training/data.py``), and the DataLoader has its own
generator seeded from ``seed`` (so creating its iterator draws nothing from the global RNG, and its workers — which
draw nothing — get the same base seed in a resumed run). Test: ``tests/training/test_exact_resume.py``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from marginface.runs.checkpoints import (  # noqa: F401  (moved to marginface.runs.checkpoints; kept for one release)
    atomic_write_text,
    load_model_tensors,
    model_tensors,
    write_checkpoint,
)
from marginface.runs.layout import RunDir


def flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON-able metadata."""
    tensors, meta_state = {}, {}
    for param_id, slots in state_dict["state"].items():
        meta_state[str(param_id)] = {}
        for slot, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"state.{param_id}.{slot}"] = value.detach().cpu().contiguous()
            else:
                meta_state[str(param_id)][slot] = value
    return tensors, {"param_groups": state_dict["param_groups"], "state": meta_state}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(k): dict(v) for k, v in meta["state"].items()}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, param_id, slot = key.split(".", 2)
            state.setdefault(int(param_id), {})[slot] = value
    return {"param_groups": meta["param_groups"], "state": state}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    np_state = np.random.get_state()
    meta = {"python": json.loads(json.dumps(random.getstate())),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(run_dir: Path, step: int, backbone: nn.Module, loss: nn.Module | None,
                    optimizer: torch.optim.Optimizer, extra_state: dict[str, Any],
                    metadata: dict[str, str] | None = None,
                    training_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``run_dir/checkpoints/step_<step>`` atomically (``runs.checkpoints.write_checkpoint``). Returns the
    folder.

    ``metadata`` goes into ``model.safetensors``' header (the model card, see ``marginface.models.card``);
    ``training_tensors`` (e.g. the head's sampler state, ``head.*``) into ``optimizer.safetensors``.
    """
    opt_tensors, opt_meta = flatten_optimizer(optimizer.state_dict())
    rng_tensors, rng_meta = rng_state()
    state = {"step": step, "optimizer": opt_meta, "rng": rng_meta, **extra_state}
    return write_checkpoint(run_dir, step, model_tensors(backbone, loss),
                            {**opt_tensors, **rng_tensors, **(training_tensors or {})}, state, metadata)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run (shard 0's), or None (``RunDir.newest_folder``)."""
    return RunDir(run_dir).newest_folder()
