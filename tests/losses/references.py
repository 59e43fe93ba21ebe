"""Independent float64 references for every registered loss, written from the papers' formulas.

Each reference is a naive per-sample, per-class loop over 0-d float64 tensors (so autograd gives reference
gradients too). It reads only the loss's *parameters* (margin, scale, ...) and its *state before the forward*
(``state``: the loss's buffers, cloned), never its methods, and re-derives any state update itself.

A reference has the signature ``ref(x, params, labels, loss, state, training) -> (logits, loss_value)`` where
``x`` (B, D) and every entry of ``params`` (the loss's named parameters: ``weight`` and, for softmax, ``bias``)
are float64 leaves, ``logits`` is (B, C) and ``loss_value`` a scalar. Losses that are not a softmax
cross-entropy return ``logits=None`` and their own loss value.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

Reference = Callable[..., tuple[Tensor | None, Tensor]]
REFERENCES: dict[str, Reference] = {}


def reference(name: str) -> Callable[[Reference], Reference]:
    def wrap(fn: Reference) -> Reference:
        REFERENCES[name] = fn
        return fn

    return wrap


# ----------------------------------------------------------------------------- shared naive pieces
def unit(v: Tensor) -> Tensor:
    return v / torch.sqrt((v * v).sum())


def cosine(x_i: Tensor, w_j: Tensor) -> Tensor:
    return (unit(x_i) * unit(w_j)).sum()


def theta_of(c: Tensor) -> Tensor:
    return torch.acos(torch.clamp(c, -1.0, 1.0))


def cross_entropy_rows(rows: list[list[Tensor]], labels: Tensor, extra: list[Tensor] | None = None):
    """Stack per-element logits and compute the mean cross-entropy with a naive, max-shifted log-sum-exp."""
    total = torch.zeros((), dtype=torch.float64)
    for i, row in enumerate(rows):
        top = max(float(v) for v in row)
        lse = torch.log(sum(torch.exp(v - top) for v in row)) + top
        total = total + lse - row[int(labels[i])]
        if extra is not None:
            total = total + extra[i]
    logits = torch.stack([torch.stack(row) for row in rows])
    return logits, total / len(rows)


def per_element(x: Tensor, w: Tensor, labels: Tensor, target_fn, other_fn):
    """rows[i][j] = target_fn(i, cos_ij) if j == y_i else other_fn(i, cos_ij, cos_iy)."""
    rows = []
    for i in range(x.shape[0]):
        y = int(labels[i])
        cos_y = cosine(x[i], w[y])
        row = []
        for j in range(w.shape[0]):
            c = cos_y if j == y else cosine(x[i], w[j])
            row.append(target_fn(i, c) if j == y else other_fn(i, c, cos_y))
        rows.append(row)
    return rows


def arc_target(c: Tensor, m: float) -> Tensor:
    """cos(theta + m), or cos(theta) - m sin(m) where theta + m > pi (ArcFace's monotonic fallback)."""
    theta = theta_of(c)
    if float(theta) + m > math.pi:
        return c - m * math.sin(m)
    return torch.cos(theta + m)


# ----------------------------------------------------------------------------- the classic family
@reference("softmax")
def softmax_ref(x, params, labels, loss, state, training):
    w, b = params["weight"], params.get("bias")
    rows = []
    for i in range(x.shape[0]):
        rows.append([(x[i] * w[j]).sum() + (b[j] if b is not None else 0.0) for j in range(w.shape[0])])
    return cross_entropy_rows(rows, labels)


@reference("normface")
def normface_ref(x, params, labels, loss, state, training):
    s = loss.scale
    rows = per_element(x, params["weight"], labels, lambda i, c: s * c, lambda i, c, cy: s * c)
    return cross_entropy_rows(rows, labels)


def _additive_cosine(x, params, labels, loss):
    s, m = loss.scale, loss.margin
    rows = per_element(x, params["weight"], labels, lambda i, c: s * (c - m), lambda i, c, cy: s * c)
    return cross_entropy_rows(rows, labels)


@reference("am_softmax")
def am_softmax_ref(x, params, labels, loss, state, training):
    return _additive_cosine(x, params, labels, loss)


@reference("cosface")
def cosface_ref(x, params, labels, loss, state, training):
    return _additive_cosine(x, params, labels, loss)


@reference("arcface")
def arcface_ref(x, params, labels, loss, state, training):
    s, m = loss.scale, loss.margin

    def target(i, c):
        if loss.easy_margin and float(c) <= 0:
            return s * c
        return s * arc_target(c, m)

    rows = per_element(x, params["weight"], labels, target, lambda i, c, cy: s * c)
    return cross_entropy_rows(rows, labels)


@reference("combined")
def combined_ref(x, params, labels, loss, state, training):
    s, m1, m2, m3 = loss.scale, loss.m1, loss.m2, loss.m3
    theta_star = (math.pi - m2) / m1
    penalty = max(m2 * math.sin(m2), 1.0 + math.cos(min(theta_star, math.pi)))

    def target(i, c):
        theta = theta_of(c)
        if m1 * float(theta) + m2 > math.pi:
            return s * (c - m3 - penalty)
        return s * (torch.cos(m1 * theta + m2) - m3)

    rows = per_element(x, params["weight"], labels, target, lambda i, c, cy: s * c)
    return cross_entropy_rows(rows, labels)


@reference("sphereface")
def sphereface_ref(x, params, labels, loss, state, training):
    m = loss.margin
    step = int(state["step"]) + (1 if training else 0)
    lam = max(loss.lambda_min, loss.lambda_base * (1 + loss.lambda_gamma * step) ** (-loss.lambda_power))
    norms = [torch.sqrt((x[i] * x[i]).sum()) for i in range(x.shape[0])]

    def target(i, c):
        theta = theta_of(c)
        k = min(math.floor(m * float(theta) / math.pi), m - 1)
        psi = (-1) ** k * torch.cos(m * theta) - 2 * k
        return norms[i] * (lam * c + psi) / (1 + lam)

    rows = per_element(x, params["weight"], labels, target, lambda i, c, cy: norms[i] * c)
    return cross_entropy_rows(rows, labels)


@reference("mv_softmax")
def mv_softmax_ref(x, params, labels, loss, state, training):
    s, m, t = loss.scale, loss.margin, loss.t

    def margined(c):
        return c - m if loss.base == "am" else arc_target(c, m)

    def other(i, c, cos_y):
        if float(c) > float(margined(cos_y)):  # a mis-classified vector
            return s * ((t + 1) * c + t) if loss.mode == "adaptive" else s * (c + t)
        return s * c

    rows = per_element(x, params["weight"], labels, lambda i, c: s * margined(c), other)
    return cross_entropy_rows(rows, labels)


@reference("curricularface")
def curricularface_ref(x, params, labels, loss, state, training):
    s, m = loss.scale, loss.margin
    t = float(state["t"])
    if training:
        target_cos = [float(cosine(x[i], params["weight"][int(labels[i])])) for i in range(x.shape[0])]
        t = loss.momentum * sum(target_cos) / len(target_cos) + (1 - loss.momentum) * t

    def other(i, c, cos_y):
        if float(c) > float(arc_target(cos_y, m)):  # a hard negative
            return s * c * (t + c)
        return s * c

    rows = per_element(x, params["weight"], labels, lambda i, c: s * arc_target(c, m), other)
    return cross_entropy_rows(rows, labels)


@reference("circle")
def circle_ref(x, params, labels, loss, state, training):
    gamma, m = loss.scale, loss.margin

    def weight(v: Tensor) -> Tensor:
        v = torch.clamp(v, min=0.0)
        return v.detach() if loss.detach_weights else v

    rows = per_element(
        x, params["weight"], labels,
        lambda i, c: gamma * weight(1 + m - c) * (c - (1 - m)),
        lambda i, c, cy: gamma * weight(c + m) * (c - m),
    )
    return cross_entropy_rows(rows, labels)
