"""Shared cases for the loss harness: every registered loss with its defaults plus the variants worth checking."""

from __future__ import annotations

import torch

from marginface import losses

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
