"""The SGD update of the class centres applied inside the chunked head's backward: no (C, D) gradient.

At C = 1M and D = 512 the dense gradient of ``loss.weight`` is 2 GB, as large as one (B, C) logit tensor at
B = 512, and it is the largest thing a ChunkedHead still allocates per step. The optimizer only needs each
row's gradient once, so the chunk backward can apply the update to a chunk's rows as soon as their gradient
exists and drop it: the "optimizer fused into backward" of the LLM cross-entropy kernels, with torch SGD's
arithmetic and its state.

:class:`FusedRowUpdate` reads everything from an ``SGD``-family optimizer (``torch.optim.SGD`` or
:class:`marginface.heads.SparseRowSGD`) that holds ``loss.weight``: the hyper-parameters from its param group
at backward time (so LR schedules apply), the momentum buffer from ``optimizer.state[weight]`` (so
``optimizer.state_dict()`` checkpoints and resumes it). ``weight.grad`` stays None, so ``optimizer.step()``
skips the centres and updates everything else. Per row, the same ops in the same order as torch SGD::

    g = grad + weight_decay * w
    buf = g                                    on the first step (no buffer yet)
        = momentum * buf + (1 - dampening) * g otherwise
    w -= lr * (g + momentum * buf if nesterov else buf)

The rows holding a target class of the batch also receive a gradient from the target logit, which autograd
delivers after the chunk backward (the target similarity feeds the context the chunks read). Those at most B
rows are kept out of the chunk update (their gradient parked in a (U, D) buffer, their values restored) and
updated once the target gradient arrives, in :class:`GradSink`'s hook.

Contract: every backward through the head *is* an optimizer step of the centres. So: one backward per step
(no gradient accumulation over micro-batches), no gradient scaling (fp16 GradScaler) and no all-reduce of the
centre gradient (plain DDP) — the trainer refuses those combinations.
"""

from __future__ import annotations

import torch
from torch import Tensor

_SGD_KEYS = ("lr", "momentum", "dampening", "weight_decay", "nesterov")


class FusedRowUpdate:
    """Applies ``optimizer``'s SGD update to rows of ``weight`` as their gradients are produced.

    ``optimizer`` must hold ``weight`` in one of its param groups and be SGD-like (a group with lr, momentum,
    dampening, weight_decay, nesterov; not ``maximize``); a ValueError names what is wrong otherwise.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, weight: Tensor) -> None:
        self.optimizer, self.weight = optimizer, weight
        self.group = self._find_group()
        self._first_step = False
        # True between a chunk backward and the target gather that completes it (PendingTargets.finish).
        self.awaiting_targets = False

    def _find_group(self) -> dict:
        """The param group of ``weight``, looked up afresh: ``optimizer.load_state_dict`` replaces the groups."""
        optimizer, weight = self.optimizer, self.weight
        group = next((g for g in optimizer.param_groups if any(p is weight for p in g["params"])), None)
        if group is None:
            raise ValueError("the optimizer does not hold loss.weight: build it over the loss's parameters "
                             "(e.g. model.parameters()) before fusing its update into the head")
        missing = [k for k in _SGD_KEYS if k not in group]
        if missing or group.get("maximize", False):
            raise ValueError(
                f"{type(optimizer).__name__} cannot be fused into the head's backward: only SGD-family optimizers "
                "(torch.optim.SGD, marginface.heads.SparseRowSGD) without maximize are supported"
                + (f" (its param group lacks {', '.join(missing)})" if missing else ""))
        return group

    def begin(self) -> None:
        """Called once at the start of a backward: current hyper-parameters, and a momentum buffer."""
        self.group = self._find_group()
        self._first_step = False
        if self.group["momentum"] == 0:
            return
        state = self.optimizer.state[self.weight]
        if state.get("momentum_buffer") is None:
            # torch SGD's first step sets buf = g; every row is written this backward, so empty is enough.
            state["momentum_buffer"] = torch.empty_like(self.weight, memory_format=torch.preserve_format)
            self._first_step = True
        started = state.get("row_started")
        if started is not None and not bool(started.all()):
            raise ValueError("loss.weight has rows that sparse (Partial FC) steps never started; a fused dense "
                             "update cannot mix with them: keep one head kind per run")
        state.pop("row_started", None)

    @torch.no_grad()
    def update_rows(self, rows: slice | Tensor, grad: Tensor) -> None:
        """SGD on ``weight[rows]`` with gradient ``grad`` (consumed: modified in place)."""
        group, weight = self.group, self.weight
        index = isinstance(rows, Tensor)
        values = weight.index_select(0, rows) if index else weight[rows]
        if group["weight_decay"] != 0:
            grad.add_(values, alpha=group["weight_decay"])
        step = grad
        if group["momentum"] != 0:
            buf_all = self.optimizer.state[weight]["momentum_buffer"]
            buf = buf_all.index_select(0, rows) if index else buf_all[rows]
            if self._first_step:
                buf.copy_(grad)
            else:
                buf.mul_(group["momentum"]).add_(grad, alpha=1 - group["dampening"])
            if index:
                buf_all.index_copy_(0, rows, buf)
            step = grad.add_(buf, alpha=group["momentum"]) if group["nesterov"] else buf
        values.add_(step, alpha=-group["lr"])
        if index:
            weight.index_copy_(0, rows, values)

    @torch.no_grad()
    def snapshot(self, rows: Tensor) -> tuple[Tensor, Tensor | None]:
        """Copies of ``weight[rows]`` and their momentum rows, to restore after a chunk update."""
        buf = self.optimizer.state[self.weight].get("momentum_buffer")
        return self.weight[rows].clone(), None if buf is None or self._first_step else buf[rows].clone()

    @torch.no_grad()
    def restore(self, rows: Tensor, saved: tuple[Tensor, Tensor | None]) -> None:
        values, buf = saved
        self.weight[rows] = values
        if buf is not None:
            self.optimizer.state[self.weight]["momentum_buffer"][rows] = buf


class PendingTargets:
    """The chunk-backward gradients of the batch's target rows, waiting for the target-logit gradient."""

    def __init__(self, update: FusedRowUpdate, targets: Tensor, grad: Tensor) -> None:
        self.update, self.targets, self.grad = update, targets, grad

    def finish(self, index: Tensor, target_grad: Tensor) -> None:
        """Add the gathered rows' gradient (rows ``index``, possibly repeated) and update the target rows.

        A sharded head gathers a placeholder row for samples of other ranks' classes (their gradient is zero);
        rows that are not targets here are skipped.
        """
        position = torch.searchsorted(self.targets, index).clamp_(max=max(self.targets.numel() - 1, 0))
        known = (self.targets[position] == index) if self.targets.numel() else torch.zeros_like(index, dtype=bool)
        self.grad.index_add_(0, position[known], target_grad[known])
        self.update.update_rows(self.targets, self.grad)
        self.update.awaiting_targets = False
