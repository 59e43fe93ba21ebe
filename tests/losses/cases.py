"""Shared cases for the loss harness: every registered loss with its defaults plus the variants worth checking."""

from __future__ import annotations

import math

import torch

from marginface import losses


def chord(fn, low: float, high: float, intervals: int) -> tuple[list[float], list[float]]:
    """Slopes and intercepts of the piecewise-linear interpolation of ``fn`` at equal breakpoints of [low, high]."""
    edges = [low + (high - low) * i / intervals for i in range(intervals + 1)]
    values = [fn(e) for e in edges]
    slopes = [(values[i + 1] - values[i]) / (edges[i + 1] - edges[i]) for i in range(intervals)]
    return slopes, [values[i] - slopes[i] * edges[i] for i in range(intervals)]


def _arc(c: float, m: float = 0.5) -> float:
    theta = math.acos(max(-1.0, min(1.0, c)))
    return math.cos(theta + m) if theta + m <= math.pi else c - m * math.sin(m)


_ARC_A, _ARC_B = chord(_arc, -1.0, 1.0, 6)
_FOCAL_A, _FOCAL_B = chord(lambda p: p ** 1.5, 0.0, 1.0, 5)
_HELP_A, _HELP_B = chord(lambda c: c + 0.3 * (1.0 - c * c), -1.0, 1.0, 4)  # above the identity inside (-1, 1)
_SQRT_A, _SQRT_B = chord(math.sqrt, 0.0, 1.0, 4)  # tau(p) >= p
#: AM-LFS samples: CosFace-like t, an ArcFace chord t with a focal-like tau (both never help), and one that helps.
AMLFS_COSFACE = {"scale": 30.0, "logit_intercepts": [-0.35] * 6}
AMLFS_ARC_FOCAL = {"scale": 30.0, "logit_slopes": _ARC_A, "logit_intercepts": _ARC_B,
                   "prob_slopes": _FOCAL_A, "prob_intercepts": _FOCAL_B}
AMLFS_HELPS = {"scale": 16.0, "logit_slopes": _HELP_A, "logit_intercepts": _HELP_B,
               "prob_slopes": _SQRT_A, "prob_intercepts": _SQRT_B}

# Variants beyond the defaults: each exercises a branch the defaults do not.
VARIANTS: dict[str, list[dict]] = {
    "arcface": [{"easy_margin": True}, {"margin": 1.2}],
    "combined": [{"m1": 1.35, "m2": 0.2, "m3": 0.1}, {"m1": 0.9, "m2": 0.4, "m3": 0.15}],
    "sphereface": [{"lambda_base": 0.0, "lambda_min": 0.0}, {"margin": 3, "lambda_base": 0.0, "lambda_min": 0.0},
                   {"margin": 2, "lambda_min": 1.0}],
    "mv_softmax": [{"base": "arc"}, {"mode": "fixed"}, {"base": "arc", "mode": "fixed", "t": 0.5},
                   {"easy_margin": True}, {"base": "arc", "easy_margin": True}],
    "normface": [{"learn_scale": True, "scale": 10.0}],
    "circle": [{"detach_weights": False}],
    "softmax": [{"bias": False}],
    # the successors: the branches their defaults miss; secondary switches are checked in test_successors.py
    "subcenter_arcface": [{"k": 2, "margin": 1.2}],
    "adaface": [{"margin": 1.2, "h": 3.0, "momentum": 1.0},
                {"margin": 1.2, "h": 3.0, "momentum": 1.0, "detach_norms": False}],
    "magface": [{"magnitude_min": 1.0, "magnitude_max": 8.0, "margin_min": 0.8, "margin_max": 1.5}],
    "elasticface_arc": [{"margin": 1.2, "std": 0.3}],
    "sphereface2": [{"magnitude_type": "A"}],
    "adacos": [{"dynamic": False}],
    "amlfs": [AMLFS_COSFACE, AMLFS_ARC_FOCAL, AMLFS_HELPS],
}


def all_cases() -> list[tuple[str, dict]]:
    """(name, params) for every registered loss (defaults first) and its variants."""
    cases = []
    for name in losses.available():
        cases.append((name, {}))
        cases.extend((name, params) for params in VARIANTS.get(name, []))
    return cases


def case_id(case: tuple[str, dict]) -> str:
    name, params = case
    if name == "amlfs" and params:  # the parameter lists are long: name the sample instead
        return name + "-" + {id(AMLFS_COSFACE): "cosface", id(AMLFS_ARC_FOCAL): "arc_focal",
                             id(AMLFS_HELPS): "helps"}.get(id(params), "custom")
    return name + ("" if not params else "-" + "-".join(f"{k}={v}" for k, v in params.items()))


def build(name: str, params: dict, embedding_size: int = 6, num_classes: int = 7, seed: int = 0,
          dtype: torch.dtype = torch.float64) -> losses.MarginLoss:
    """A loss with unit-scale random centres (the default init is tiny) in ``dtype``."""
    torch.manual_seed(seed)
    loss = losses.create(name, embedding_size=embedding_size, num_classes=num_classes, **params)
    with torch.no_grad():
        for pname, p in loss.named_parameters():
            if pname == "weight" or pname == "bias":
                p.normal_()
    if hasattr(loss, "t") and torch.is_tensor(loss.t) and name == "curricularface":
        loss.t.fill_(0.3)  # a non-zero t so the hard-negative modulation is exercised from the first step
    return loss.to(dtype)


def batch(loss: losses.MarginLoss, batch_size: int = 5, seed: int = 1, dtype: torch.dtype = torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, loss.embedding_size, generator=gen, dtype=torch.float64) * 3.0
    labels = torch.randint(0, loss.num_classes, (batch_size,), generator=gen)
    return x.to(dtype), labels
