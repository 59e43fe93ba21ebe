"""SGD that updates only the rows present in a sparse (row-sparse COO) gradient.

For a dense gradient it is ``torch.optim.SGD``. For a sparse COO gradient over rows R (what
``PartialFCHead(sparse_grad=True)`` leaves in ``loss.weight.grad``) it applies, to the rows in R only, the
same arithmetic as ``torch.optim.SGD`` (same ops in the same order)::

    g = grad[R] + weight_decay * p[R]
    buf[R] = g                                          if row R has never been updated (torch's first step)
           = momentum * buf[R] + (1 - dampening) * g    otherwise
    p[R] -= lr * (g + momentum * buf[R] if nesterov else buf[R])

Rows outside R — their values and their momentum buffers — are not touched: no weight decay, no momentum
carry-over. Every row therefore follows exactly the SGD trajectory it would follow if training had consisted
only of the steps in which it was sampled. The momentum buffer is dense (C, ...) like torch's, plus a (C,)
bool of rows already started (state ``row_started``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor


class SparseRowSGD(torch.optim.Optimizer):
    """SGD (torch's semantics and arithmetic) that, for sparse gradients, updates only their rows.

    ``lr`` > 0, ``momentum`` >= 0, ``dampening`` >= 0, ``weight_decay`` >= 0 (L2, added to the gradient as in
    torch), ``nesterov`` needs momentum > 0 and dampening 0.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if momentum < 0 or dampening < 0 or weight_decay < 0:
            raise ValueError(
                "momentum, dampening and weight_decay must be >= 0, "
                f"got {momentum}, {dampening}, {weight_decay}"
            )
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening 0")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov)
        super().__init__(params, defaults)

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's, then ``row_started`` back to bool (torch casts every state tensor to the parameter's dtype)."""
        super().load_state_dict(state_dict)
        for state in self.state.values():
            if "row_started" in state:
                state["row_started"] = state["row_started"].to(torch.bool)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter with a gradient; sparse gradients update only their rows."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    self._sparse_step(p, group)
                else:
                    self._dense_step(p, group)
        return loss

    def _dense_step(self, p: Tensor, group: dict) -> None:
        grad = p.grad
        if group["weight_decay"] != 0:
            grad = grad.add(p, alpha=group["weight_decay"])
        if group["momentum"] != 0:
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = torch.clone(grad).detach()
            else:
                buf.mul_(group["momentum"]).add_(grad, alpha=1 - group["dampening"])
                started = state.pop("row_started", None)  # set by earlier sparse steps: start the other rows
                if started is not None and not started.all():
                    buf[~started] = grad[~started]
            grad = grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
        p.add_(grad, alpha=-group["lr"])

    def _sparse_step(self, p: Tensor, group: dict) -> None:
        grad = p.grad.coalesce()  # duplicate rows (target rows also in the sampled set) are summed
        rows, grad = grad.indices()[0], grad.values()
        values = p.index_select(0, rows)
        if group["weight_decay"] != 0:
            grad = grad.add(values, alpha=group["weight_decay"])
        if group["momentum"] != 0:
            grad = self._sparse_momentum(p, rows, grad, group)
        values.add_(grad, alpha=-group["lr"])
        p.index_copy_(0, rows, values)

    def _sparse_momentum(self, p: Tensor, rows: Tensor, grad: Tensor, group: dict) -> Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
            state["row_started"] = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
        elif "row_started" not in state:  # after dense steps every row has started
            state["row_started"] = torch.ones(p.shape[0], dtype=torch.bool, device=p.device)
        buf_all, started = state["momentum_buffer"], state["row_started"]
        buf = buf_all.index_select(0, rows)
        buf.mul_(group["momentum"]).add_(grad, alpha=1 - group["dampening"])
        # torch's first step sets buf = g exactly (no dampening): rows never updated before start that way.
        fresh = ~started.index_select(0, rows)
        if fresh.any():
            buf[fresh] = grad[fresh]
        buf_all.index_copy_(0, rows, buf)
        started.index_fill_(0, rows, True)
        return grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
