"""Checkpoints that resume exactly and are never half-written.

A checkpoint is a folder ``<run>/checkpoints/step_<N>/`` holding
- ``model.safetensors``: the backbone (keys ``backbone.*``) and the loss with its class centres and running
  state (keys ``loss.*``) — the file evaluation and export read;
- ``optimizer.safetensors``: every tensor of the optimizer state (momentum buffers) and the RNG states;
- ``state.json``: step, optimizer hyper-parameters, scheduler, grad-scaler and data-order state, Python/NumPy RNG.
It is written into ``step_<N>.tmp`` and renamed into place (an atomic rename on POSIX), and ``latest`` (a text
file naming the newest folder) is replaced atomically afterwards: a kill at any moment leaves either the old or
the new checkpoint, never a torn one. Nothing is unpickled on load.

**Every RNG a run draws from** is saved and restored: torch's global generator (dropout, initialisation), CUDA's
when initialised, Python's ``random`` and NumPy's global state, and the head's sampler generator (``head.*``). The
data order and flips are functions of ``(seed, step)`` (``training/data.py``), and the DataLoader has its own
generator seeded from ``seed`` (so creating its iterator draws nothing from the global RNG, and its workers — which
draw nothing — get the same base seed in a resumed run). Test: ``tests/training/test_exact_resume.py``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

# atomic_write_text moved to marginface.files; importing it from here is kept for one release
from marginface.files import atomic_write_text, fsync_dir, fsync_tree, respect_umask


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


def model_tensors(backbone: nn.Module, loss: nn.Module | None) -> dict[str, torch.Tensor]:
    """The weights of a run under ``backbone.*`` and ``loss.*`` (buffers included), contiguous, on the CPU."""
    out = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    if loss is not None:
        out.update({f"loss.{k}": v for k, v in loss.state_dict().items()})
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def save_checkpoint(run_dir: Path, step: int, backbone: nn.Module, loss: nn.Module | None,
                    optimizer: torch.optim.Optimizer, extra_state: dict[str, Any],
                    metadata: dict[str, str] | None = None,
                    training_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``run_dir/checkpoints/step_<step>`` atomically and point ``latest`` at it. Returns the folder.

    ``metadata`` goes into ``model.safetensors``' header (the model card, see ``marginface.inference.card``);
    ``training_tensors`` (e.g. the head's sampler state, ``head.*``) into ``optimizer.safetensors``.
    """
    opt_tensors, opt_meta = flatten_optimizer(optimizer.state_dict())
    rng_tensors, rng_meta = rng_state()
    state = {"step": step, "optimizer": opt_meta, "rng": rng_meta, **extra_state}
    return write_checkpoint(run_dir, step, model_tensors(backbone, loss),
                            {**opt_tensors, **rng_tensors, **(training_tensors or {})}, state, metadata)


def write_checkpoint(run_dir: str | Path, step: int, model: dict[str, torch.Tensor],
                     training: dict[str, torch.Tensor], state: dict[str, Any],
                     metadata: dict[str, str] | None = None) -> Path:
    """The checkpoint folder's three files from tensors and state, atomically (see the module doc)."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / f"step_{step:08d}", root / f"step_{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(model, str(tmp / "model.safetensors"), metadata=metadata)
    save_file(training, str(tmp / "optimizer.safetensors"))
    for name in ("model.safetensors", "optimizer.safetensors"):
        respect_umask(tmp / name)
    (tmp / "state.json").write_text(json.dumps(state))
    fsync_tree(tmp)
    if final.exists():  # a re-run of the same step after a resume: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_text(root / "latest", final.name)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text().strip()
    return folder if (folder / "state.json").is_file() else None


def load_model_tensors(weights: dict[str, torch.Tensor], backbone: nn.Module, loss: nn.Module | None) -> None:
    """Load ``backbone.*`` / ``loss.*`` tensors (what :func:`model_tensors` gives) into the modules, strictly."""
    backbone.load_state_dict({k[len("backbone."):]: v for k, v in weights.items() if k.startswith("backbone.")})
    if loss is not None:
        loss.load_state_dict({k[len("loss."):]: v for k, v in weights.items() if k.startswith("loss.")})
