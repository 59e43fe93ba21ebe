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


def scalar(value) -> float:
    """A Python float of a tensor (detached: branch decisions are constants) or of a number."""
    return float(value.detach()) if isinstance(value, Tensor) else float(value)


def cross_entropy_rows(rows: list[list[Tensor]], labels: Tensor, extra: list[Tensor] | None = None):
    """Stack per-element logits and compute the mean cross-entropy with a naive, max-shifted log-sum-exp."""
    total = torch.zeros((), dtype=torch.float64)
    for i, row in enumerate(rows):
        top = max(float(v.detach()) for v in row)  # a constant shift: no gradient through it
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
    if scalar(theta) + m > math.pi:
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
    s = params["learned_scale"].clamp(min=loss.scale_floor) if loss.learn_scale else loss.scale
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
        if loss.easy_margin and scalar(c) <= 0:
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
        if m1 * scalar(theta) + m2 > math.pi:
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
        k = min(math.floor(m * scalar(theta) / math.pi), m - 1)
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
        if scalar(c) > scalar(margined(cos_y)):  # a mis-classified vector
            return s * ((t + 1) * c + t) if loss.mode == "adaptive" else s * (c + t)
        return s * c

    def target(i, c):  # easy_margin: the authors' code leaves cos <= m (AM) / cos <= 0 (Arc) unmargined
        easy_floor = m if loss.base == "am" else 0.0
        return s * (c if loss.easy_margin and scalar(c) <= easy_floor else margined(c))

    rows = per_element(x, params["weight"], labels, target, other)
    return cross_entropy_rows(rows, labels)


@reference("curricularface")
def curricularface_ref(x, params, labels, loss, state, training):
    s, m = loss.scale, loss.margin
    t = scalar(state["t"])
    if training:
        target_cos = [scalar(cosine(x[i], params["weight"][int(labels[i])])) for i in range(x.shape[0])]
        t = loss.momentum * sum(target_cos) / len(target_cos) + (1 - loss.momentum) * t

    def other(i, c, cos_y):
        if scalar(c) > scalar(arc_target(cos_y, m)):  # a hard negative
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


# ----------------------------------------------------------------------------- the successors
@reference("subcenter_arcface")
def subcenter_arcface_ref(x, params, labels, loss, state, training):
    """Deng et al. 2020, Eq. 2: theta_ij = arccos(max_k cos(x_i, W_jk)); ArcFace on the target's pooled cosine."""
    s, m, w = loss.scale, loss.margin, params["weight"]
    rows = []
    for i in range(x.shape[0]):
        row = []
        for j in range(w.shape[0]):
            c = max((cosine(x[i], w[j, k]) for k in range(w.shape[1])), key=lambda v: scalar(v.detach()))
            if j != int(labels[i]) or (loss.easy_margin and scalar(c.detach()) <= 0):
                row.append(s * c)
            else:
                row.append(s * arc_target(c, m))
        rows.append(row)
    return cross_entropy_rows(rows, labels)


@reference("adaface")
def adaface_ref(x, params, labels, loss, state, training):
    """Kim et al. 2022, Eq. 11-14, with the official code's norm clip [1e-3, 100], eps 1e-3 and initial stats."""
    m, h, s, alpha = loss.margin, loss.h, loss.scale, loss.momentum
    mean, std = scalar(state["batch_mean"]), scalar(state["batch_std"])
    z = [torch.clamp(torch.sqrt((x[i] * x[i]).sum()), 1e-3, 100.0) for i in range(x.shape[0])]
    if loss.detach_norms:
        z = [v.detach() for v in z]
    if training:  # the statistics never carry a gradient
        values = [scalar(v.detach()) for v in z]
        batch_mean = sum(values) / len(values)
        mean = alpha * batch_mean + (1 - alpha) * mean
        if len(values) > 1:  # the unbiased batch std; a batch of one keeps the old std
            batch_std = math.sqrt(sum((v - batch_mean) ** 2 for v in values) / (len(values) - 1))
            std = alpha * batch_std + (1 - alpha) * std

    def target(i, c):
        z_hat = torch.clamp(h * (z[i] - mean) / (std + 1e-3), -1.0, 1.0)
        g_angle, g_add = -m * z_hat, m + m * z_hat
        phi = theta_of(c) + g_angle
        if scalar(phi) < 0:  # clipped at angle 0
            angular = torch.ones((), dtype=torch.float64)
        elif scalar(phi) > math.pi:  # ArcFace's monotonic fallback (g_angle > 0 only)
            angular = c - g_angle * torch.sin(g_angle)
        else:
            angular = torch.cos(phi)
        return s * (angular - g_add)

    rows = per_element(x, params["weight"], labels, target, lambda i, c, cy: s * c)
    return cross_entropy_rows(rows, labels)


@reference("magface")
def magface_ref(x, params, labels, loss, state, training):
    """Meng et al. 2021: m(a) linear on [l_a, u_a], target cos(theta + m(a)), loss + lambda_g (1/a + a/u_a^2)."""
    s, l_a, u_a = loss.scale, loss.magnitude_min, loss.magnitude_max
    l_m, u_m, lam = loss.margin_min, loss.margin_max, loss.regularizer_weight
    mags = [torch.clamp(torch.sqrt((x[i] * x[i]).sum()), l_a, u_a) for i in range(x.shape[0])]
    margins = [(u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m for a in mags]

    def target(i, c):
        if loss.easy_margin and scalar(c) <= 0:
            return s * c
        theta, m_i = theta_of(c), margins[i]
        if scalar(theta) + scalar(m_i) > math.pi:
            return s * (c - m_i * torch.sin(m_i))
        return s * torch.cos(theta + m_i)

    rows = per_element(x, params["weight"], labels, target, lambda i, c, cy: s * c)
    regularizer = [lam * (1.0 / a + a / u_a**2) for a in mags]
    return cross_entropy_rows(rows, labels, extra=regularizer)


def _elastic_margins(loss, state, training, batch_size):
    """The margins of this step: the mean in eval mode; in training, the draws of step (state step + 1) from
    the documented (seed, step) generator, N(margin, std) clipped at 0."""
    if not training:
        return [loss.margin] * batch_size
    step = int(state["step"]) + 1
    gen = torch.Generator().manual_seed((int(state["seed"]) + step * 0x9E3779B9) % 2**32)
    normals = torch.randn(batch_size, generator=gen, dtype=torch.float64)
    return [max(0.0, loss.margin + loss.std * scalar(v)) for v in normals]


@reference("elasticface_arc")
def elasticface_arc_ref(x, params, labels, loss, state, training):
    """Boutros et al. 2022: ArcFace with a per-sample margin m_i ~ N(m, std)."""
    s, margins = loss.scale, _elastic_margins(loss, state, training, x.shape[0])
    rows = per_element(x, params["weight"], labels, lambda i, c: s * arc_target(c, margins[i]),
                       lambda i, c, cy: s * c)
    return cross_entropy_rows(rows, labels)


@reference("elasticface_cos")
def elasticface_cos_ref(x, params, labels, loss, state, training):
    """Boutros et al. 2022: CosFace with a per-sample margin m_i ~ N(m, std)."""
    s, margins = loss.scale, _elastic_margins(loss, state, training, x.shape[0])
    rows = per_element(x, params["weight"], labels, lambda i, c: s * (c - margins[i]), lambda i, c, cy: s * c)
    return cross_entropy_rows(rows, labels)


@reference("sphereface2")
def sphereface2_ref(x, params, labels, loss, state, training):
    """Wen et al. 2022: lambda/r log(1 + e^-z_y) + (1 - lambda)/r sum_{j != y} log(1 + e^z_j) per sample, with
    z = r g(.) + b; type C: g(cos) -+ m, type A: g(cos(min(theta_y + m, pi))) for the target only."""
    r, m, lam, t, b = loss.scale, loss.margin, loss.positive_weight, loss.t, params["bias"]

    def g(c):
        return 2 * ((c + 1) / 2) ** t - 1

    def binary_logit(c, adjusted):
        if loss.detach_adjustment:  # opensphere's forward-only adjustment
            adjusted = c + (adjusted - c).detach()
        return r * adjusted + b

    w = params["weight"]
    rows, total = [], torch.zeros((), dtype=torch.float64)
    for i in range(x.shape[0]):
        row = []
        for j in range(w.shape[0]):
            c = cosine(x[i], w[j])
            if j == int(labels[i]):
                adjusted = g(c) - m if loss.magnitude_type == "C" else g(torch.cos(torch.clamp(theta_of(c) + m,
                                                                                            max=math.pi)))
                z = binary_logit(c, adjusted)
                total = total + lam * torch.log1p(torch.exp(-z))
            else:
                z = binary_logit(c, g(c) + (m if loss.magnitude_type == "C" else 0.0))
                total = total + (1 - lam) * torch.log1p(torch.exp(z))
            row.append(z)
        rows.append(row)
    logits = torch.stack([torch.stack(row) for row in rows])
    return logits, loss.loss_weight / r * total / x.shape[0]


@reference("adacos")
def adacos_ref(x, params, labels, loss, state, training):
    """Zhang et al. 2019: s cos(theta) everywhere; dynamic s per Algorithm 1 (updated before use)."""
    w = params["weight"]
    s = scalar(state["adaptive_scale"])
    if loss.dynamic and training:
        b_sum, target_angles = 0.0, []
        for i in range(x.shape[0]):
            for j in range(w.shape[0]):
                c = scalar(cosine(x[i], w[j]).detach())
                if j == int(labels[i]):
                    target_angles.append(math.acos(max(-1.0, min(1.0, c))))
                else:
                    b_sum += math.exp(s * c)
        b_avg = b_sum / x.shape[0]
        theta_med = sorted(target_angles)[(len(target_angles) - 1) // 2]  # the lower median
        s = max(math.log(b_avg) / math.cos(min(math.pi / 4, theta_med)), 1e-3)
    rows = per_element(x, w, labels, lambda i, c: s * c, lambda i, c, cy: s * c)
    return cross_entropy_rows(rows, labels)


# ----------------------------------------------------------------------------- AM-LFS (a sampled search-space point)
def _piece(x: float, slopes, intercepts, low: float, high: float) -> tuple[float, float]:
    """(slope, intercept) of the interval [e_i, e_i+1) holding x; the last interval also holds ``high``."""
    count = len(slopes)
    for i in range(count):
        upper = low + (high - low) * (i + 1) / count
        if x < upper or i == count - 1:
            return slopes[i], intercepts[i]
    raise AssertionError("unreachable")


@reference("amlfs")
def amlfs_ref(x, params, labels, loss, state, training):
    """Li et al. 2019: target logit s t(cos theta_y), loss -log tau(p_y); t, tau piecewise linear (Sec. 3.2)."""
    s = loss.scale

    def target(i, c):
        a, b = _piece(scalar(c), loss.logit_slopes, loss.logit_intercepts, -1.0, 1.0)
        return s * (a * c + b)

    rows = per_element(x, params["weight"], labels, target, lambda i, c, cy: s * c)
    total = torch.zeros((), dtype=torch.float64)
    for i, row in enumerate(rows):
        top = max(float(v.detach()) for v in row)
        p = torch.exp(row[int(labels[i])] - top) / sum(torch.exp(v - top) for v in row)
        alpha, beta = _piece(scalar(p), loss.prob_slopes, loss.prob_intercepts, 0.0, 1.0)
        if beta == 0 and alpha > 0:  # tau through 0: -log tau(p) = -log p - log alpha, no floor needed
            total = total - torch.log(p) - math.log(alpha)
            continue
        tau = alpha * p + beta
        total = total - torch.log(tau if scalar(tau) > 1e-30 else torch.tensor(1e-30, dtype=torch.float64))
    logits = torch.stack([torch.stack(row) for row in rows])
    return logits, total / len(rows)
