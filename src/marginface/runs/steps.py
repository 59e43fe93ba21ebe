"""Read a run's saved step whatever number of processes held its class centres, cut for any other number.

A step of a run is saved as one checkpoint folder per shard of its class centres (``training/placement.py``):
``<run>/checkpoints/step_<N>`` for shard 0 (or for a replicated run's only copy) and
``<run>/rank<k>/checkpoints/step_<N>`` for shard k. Each folder's ``state.json`` records the layout
(``classes``: number of classes, shards, this shard's rows; ``optimizer_ids``: the optimizer's ids of the
per-class parameters). :class:`SavedStep` reads such a step and gives the files of *any* shard of *any* layout:

- tensors indexed by class along dimension 0 — the loss's centres (and a softmax bias), their momentum / Adam
  moments and SparseRowSGD's ``row_started`` — are cut from the saved shards that overlap the new rows, lazily
  (``safe_open`` slices: a process never holds more than its own rows of a multi-million-class matrix);
- everything else (backbone, scalar loss state such as CurricularFace's ``t``, optimizer hyper-parameters, step,
  best, grad scaler) is replicated and comes from shard 0;
- per-process state — the RNGs and the head's sampler (Partial FC's generator) — comes from the saved shard with
  the same index when there is one, else from shard 0 (a new rank's sampler then starts from rank 0's state).

The trainer resumes through it (``training/reshard.py``: so a sharded run continues on R' != R processes, or in
one process with a dense or chunked head, and back), ``marginface checkpoint merge|split`` rewrite a step for a
user who needs the full centre matrix or another layout, and the analysis reads a step's whole model from it.
Nothing is unpickled.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from marginface.errors import UserError
from marginface.heads.sharded import shard_range
from marginface.runs.checkpoints import write_checkpoint
from marginface.runs.layout import CHECKPOINT_FILES, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, RunDir
from marginface.runs.layout import is_complete as _complete

FILES = CHECKPOINT_FILES
#: optimizer.safetensors keys of per-process state (not indexed by class, not shared by the ranks)
PER_PROCESS_PREFIXES = ("rng.", "head.")


@dataclass(frozen=True)
class ShardFiles:
    """The three files of one shard of a step, as tensors and state (what ``runs.checkpoints.write_checkpoint``
    takes)."""

    model: dict[str, torch.Tensor]
    training: dict[str, torch.Tensor]
    state: dict[str, Any]
    metadata: dict[str, str]


def step_folder(run_dir: str | Path, shard: int, step: int) -> Path:
    """``checkpoints/step_<N>`` of shard ``shard`` of a run (:meth:`RunDir.step_dir`)."""
    return RunDir(run_dir).step_dir(step, shard)


def saved_layout(state: dict[str, Any]) -> tuple[int | None, int]:
    """(number of classes or None if unrecorded, number of shards) of a step from its shard-0 ``state.json``
    (also reads the ``shard`` record of checkpoints written before layouts were recorded)."""
    if "classes" in state:
        return int(state["classes"]["num_classes"]), int(state["classes"]["shards"])
    if "shard" in state:
        return int(state["shard"]["num_classes"]), int(state["shard"]["world_size"])
    return None, 1


class SavedStep:
    """One saved step of a run, all of its shards (see the module doc)."""

    def __init__(self, run_dir: str | Path, step: int) -> None:
        self.run_dir, self.step = Path(run_dir), int(step)
        first = step_folder(run_dir, 0, step)
        if not _complete(first):
            raise UserError(f"{first} is not a complete checkpoint (it needs {', '.join(FILES)})")
        self.state = json.loads((first / STATE_FILE).read_text())
        self.num_classes, self.shards = saved_layout(self.state)
        self.folders = [step_folder(run_dir, k, step) for k in range(self.shards)]
        missing = [str(f) for f in self.folders if not _complete(f)]
        if missing:
            raise UserError(f"step {step} of {run_dir} was saved as {self.shards} shards but these are missing or "
                            f"incomplete: {', '.join(missing)} (a kill between the ranks' saves, or rank folders "
                            "not copied along: every rank<k>/ must be there)")

    # ------------------------------------------------------------------ finding one
    @staticmethod
    def newest(run_dir: str | Path) -> SavedStep | None:
        """The newest step all of whose shards were written (a kill may land between two ranks' saves)."""
        return RunDir(run_dir).newest()

    # ------------------------------------------------------------------ reading a shard of any layout
    def bounds(self, shard: int, num_classes: int) -> tuple[int, int]:
        return shard_range(num_classes, self.shards, shard)

    def files_for(self, shards: int, shard: int, num_classes: int | None = None,
                  optimizer_ids: dict[str, int] | None = None) -> ShardFiles:
        """The files shard ``shard`` of ``shards`` would hold: this step's tensors re-cut to its rows.

        ``num_classes`` is needed only for old checkpoints that did not record it; ``optimizer_ids`` (the ids of
        the loss's per-class parameters in the optimizer) likewise: the trainer passes its own.
        """
        classes = self.num_classes if self.num_classes is not None else num_classes
        if classes is None:
            raise UserError(f"{self.folders[0]} does not record its number of classes; resume it with the trainer")
        if num_classes is not None and num_classes != classes:
            raise UserError(f"{self.folders[0]} holds {classes} classes but the run has {num_classes}")
        ids = self.state.get("classes", {}).get("optimizer_ids", optimizer_ids)
        if ids is None:
            raise UserError(f"{self.folders[0]} does not record which optimizer state belongs to the class centres "
                            "(written before layouts were recorded); resume it once with the trainer, which does")
        start, end = shard_range(classes, shards, shard)
        own = shard if shard < self.shards else 0  # per-process state: the same rank's, else rank 0's
        per_class_slots = tuple(f"state.{i}." for i in ids.values())
        model = self._cut(MODEL_FILE, start, end, classes, lambda key: key.startswith("loss."))
        training = self._cut(OPTIMIZER_FILE, start, end, classes,
                             lambda key: key.startswith(per_class_slots),
                             per_process=lambda key: key.startswith(PER_PROCESS_PREFIXES), own=own)
        own_state = json.loads((self.folders[own] / STATE_FILE).read_text())
        state = {k: v for k, v in self.state.items() if k not in ("shard", "head_rng")}
        state["rng"] = own_state["rng"]
        if "head_rng" in own_state:  # written before heads kept their sampler in state_dict
            state["head_rng"] = own_state["head_rng"]
        state["classes"] = {"num_classes": classes, "shards": shards, "shard": shard, "start": start, "end": end,
                            "optimizer_ids": dict(ids)}
        with safe_open(str(self.folders[0] / MODEL_FILE), "pt") as handle:
            metadata = handle.metadata() or {}
        return ShardFiles(model, training, state, metadata)

    def _cut(self, name: str, start: int, end: int, classes: int, may_be_per_class, per_process=None,
             own: int = 0) -> dict[str, torch.Tensor]:
        """The tensors of file ``name`` for the rows [start, end): per-class ones cut from every saved shard that
        overlaps them, per-process ones from shard ``own``, the rest from shard 0."""
        out: dict[str, torch.Tensor] = {}
        pieces: dict[str, list[torch.Tensor]] = {}
        for k, folder in enumerate(self.folders):
            lo, hi = self.bounds(k, classes)
            with safe_open(str(folder / name), "pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
                    shape = handle.get_slice(key).get_shape()
                    if may_be_per_class(key) and len(shape) >= 1 and shape[0] == hi - lo:
                        a, b = max(start, lo), min(end, hi)
                        if a < b:
                            pieces.setdefault(key, []).append(handle.get_slice(key)[a - lo:b - lo])
                        continue
                    source = own if per_process is not None and per_process(key) else 0
                    if k == source:
                        out[key] = handle.get_tensor(key)
        out.update({key: torch.cat(parts) for key, parts in pieces.items()})
        return out


def rewrite(run_dir: str | Path, output: str | Path, shards: int, step: int | None = None) -> SavedStep:
    """Write step ``step`` (default: the newest complete one) of ``run_dir`` as a run folder ``output`` whose class
    centres are split into ``shards`` (1: the full matrix in ``output/checkpoints/step_<N>/model.safetensors``).
    ``output`` must not exist; ``config.json`` and ``history.jsonl`` are copied along. Returns the step read."""
    run_dir, output = Path(run_dir), Path(output)
    if shards < 1:
        raise UserError(f"`shards` must be >= 1, got {shards}")
    if output.exists():
        raise UserError(f"{output} exists; choose a new folder (nothing is overwritten)")
    saved = SavedStep(run_dir, step) if step is not None else SavedStep.newest(run_dir)
    if saved is None:
        raise UserError(f"{run_dir} holds no complete checkpoint (looked for checkpoints/step_*/ with {FILES[0]})")
    if saved.num_classes is not None and saved.num_classes < shards:
        raise UserError(f"cannot split {saved.num_classes} classes into {shards} shards")
    tmp = RunDir(output.with_name(output.name + ".tmp"))
    shutil.rmtree(tmp.path, ignore_errors=True)
    for shard in range(shards):
        files = saved.files_for(shards, shard)
        write_checkpoint(tmp.rank_dir(shard), saved.step, files.model, files.training, files.state, files.metadata)
    source = RunDir(run_dir)
    for src, dst in ((source.config, tmp.config), (source.history, tmp.history)):
        if src.is_file():
            shutil.copy2(src, dst)
    tmp.path.rename(output)
    return saved
