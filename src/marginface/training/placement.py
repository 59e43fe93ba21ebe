"""Where a run's class centres live: one object the trainer asks, instead of reading ``loss.sharded`` everywhere.

A run's centres are either **replicated** (dense, chunked or Partial FC head: every process holds all C rows,
DDP averages their gradient, rank 0 writes the checkpoint) or **sharded** (``loss.sharded`` under torchrun: rank
r of R holds the rows ``shard_range(C, R, r)``, only the backbone is DDP-wrapped, every rank writes its own
checkpoint under ``rank<r>/``). :class:`ClassPlacement` answers, for this process, every question that depends on
that choice: which rows it holds, how the loss and head are built, what DDP wraps, where its checkpoints go,
what ``best.safetensors`` holds, and the layout recorded in each checkpoint (which lets a run resume on another
number of processes: ``training/reshard.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from marginface import losses
from marginface.heads import create_head, shard_range
from marginface.runs.layout import shard_folder  # noqa: F401  (moved to marginface.runs.layout; kept for one release)
from marginface.training.config import TrainConfig
from marginface.training.distributed import DistInfo


@dataclass(frozen=True)
class ClassPlacement:
    """This process's share of ``num_classes`` class centres: shard ``shard`` of ``shards`` (1 when replicated)."""

    num_classes: int
    sharded: bool = False
    shard: int = 0
    shards: int = 1

    @classmethod
    def for_run(cls, config: TrainConfig, dist_info: DistInfo, num_classes: int) -> ClassPlacement:
        if not config.loss.sharded:
            return cls(num_classes)
        if not dist_info.enabled:
            raise ValueError("loss.sharded splits the classes over torchrun's processes; this run has one "
                             "(WORLD_SIZE <= 1): launch it with torchrun --nproc_per_node=N or set loss.sharded=false")
        return cls(num_classes, True, dist_info.rank, dist_info.world_size)

    # ------------------------------------------------------------------ the rows
    @property
    def rows(self) -> tuple[int, int]:
        """[start, end) of the classes this process holds."""
        return shard_range(self.num_classes, self.shards, self.shard)

    def layout(self) -> dict[str, int]:
        """What a checkpoint records of the placement (state.json ``classes``)."""
        start, end = self.rows
        return {"num_classes": self.num_classes, "shards": self.shards, "shard": self.shard, "start": start,
                "end": end}

    # ------------------------------------------------------------------ building
    def build_loss(self, config: TrainConfig) -> losses.MarginLoss:
        start, end = self.rows
        loss = losses.create(config.loss.name, embedding_size=config.model.embedding_size, num_classes=end - start,
                             **config.loss.params)
        if self.sharded:  # the same centres whatever the number of ranks
            loss.init_rows(start, config.seed)
        return loss

    def build_head(self, config: TrainConfig, loss: losses.MarginLoss, dist_info: DistInfo) -> nn.Module:
        from marginface.training.optim import wants_sparse_centre_gradients

        # DDP all-reduces dense gradients; sparse rows are for centres no other rank holds (one process, or
        # shards), and for an optimizer that takes them (AdamW gets Partial FC's dense gradient, as arcface_torch)
        sparse = (not dist_info.enabled or self.sharded) and wants_sparse_centre_gradients(config.optim)
        return create_head(config.loss.head, loss, chunk_size=config.loss.chunk_size,
                           sample_rate=config.loss.sample_rate, seed=config.seed, sparse_grad=sparse,
                           sharded=self.sharded, num_classes=self.num_classes)

    def distributed_parts(self, model: nn.Module, wrap_ddp) -> tuple[nn.Module, nn.Module]:
        """(the DDP-wrapped module, the module a training step calls) for ``model`` (a ``FaceModel``).

        Replicated: backbone and head in one DDP, so the centre gradients are averaged too. Sharded: only the
        backbone is replicated; each rank's backward gives d(global mean loss)/d(its embeddings) and DDP averages
        over ranks, so the backbone gradient is scaled by R to be that of the global mean.
        """
        if not self.sharded:
            wrapped = wrap_ddp(model)
            return wrapped, wrapped
        wrapped = wrap_ddp(model.backbone)
        return wrapped, type(model)(wrapped, model.head, embedding_grad_scale=float(self.shards))

    def check_fused_update(self, dist_info: DistInfo) -> None:
        if dist_info.enabled and not self.sharded:  # DDP would never see (nor all-reduce) that gradient
            raise ValueError("loss.fused_update under torchrun needs loss.sharded=true: replicated centres "
                             "need their gradient all-reduced")

    # ------------------------------------------------------------------ files
    def writes_checkpoints(self, dist_info: DistInfo) -> bool:
        """Rank 0 writes a replicated run's checkpoint; every shard writes its own."""
        return self.sharded or dist_info.is_main

    def checkpoint_root(self, run_dir: Path) -> Path:
        return shard_folder(run_dir, self.shard)

    def loss_for_best(self, loss: nn.Module) -> nn.Module | None:
        """What ``best.safetensors`` keeps of the loss: all of it, or nothing when this process holds a shard
        (``marginface checkpoint merge`` assembles the full centres from a step's checkpoints)."""
        return None if self.sharded else loss


def per_class_names(tensors: dict[str, torch.Tensor], classes: int) -> list[str]:
    """The names of the tensors indexed by class along dimension 0 (centres, a softmax bias, their momentum):
    every loss keeps the class in dimension 0 (``MarginLoss.weight_shape``); scalars and other state are shared."""
    return [name for name, t in tensors.items() if t.dim() >= 1 and t.shape[0] == classes]


def head_state(head: nn.Module) -> dict[str, Any]:
    """The head's own state — the ``_extra_state`` entries of its ``state_dict`` (Partial FC's sampler), not the
    loss it wraps, whose tensors checkpoints hold as ``loss.*``."""
    return {k: v for k, v in head.state_dict().items() if k.endswith("_extra_state")}
