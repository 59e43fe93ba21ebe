"""The run's optimizer: SGD (the ArcFace recipe, the default) or AdamW (the face-ViT recipe), with parameter groups.

``build_optimizer(model, config.optim)`` is all the trainer calls. Two choices, both from ``OptimConfig``:

* ``name``: ``"sgd"`` — :class:`marginface.heads.SparseRowSGD` (torch's SGD for dense gradients; only the
  visited rows for Partial FC's sparse ones) — or ``"adamw"`` — ``torch.optim.AdamW`` (decoupled weight decay:
  ``p <- p * (1 - lr * wd)`` before the Adam step).
* ``weight_decay_params``: ``"all"`` decays every parameter (the ArcFace paper and insightface's arcface_torch,
  whose AdamW ViT recipe also passes every parameter with ``weight_decay=0.1``: ``train_v2.py``); ``"weights"``
  decays only the matrices and convolution kernels and the class centres — no decay on biases, norm scales and
  shifts, PReLU slopes (every parameter with ``ndim <= 1``) nor on anything a module lists in its
  ``no_weight_decay()`` (the ViTs' position embedding and mask token): the DeiT / timm convention for ViTs.

The class centres (``loss.weight``, ``(C, D)``) are one more 2-D parameter: trained by the same optimizer with the
same settings and decayed in both modes. What AdamW means for them, head by head:

* dense and chunked heads: the centres' gradient is dense, AdamW updates every row every step.
* ``partial_fc``: torch's AdamW has no sparse-gradient path, so with AdamW the trainer asks the head for a
  **dense** gradient (zeros in the rows not sampled this step; ``build_head``). Every row then takes an AdamW
  step every step: the unsampled rows keep moving on their decaying first moment and are decayed. This is what
  arcface_torch does (``PartialFC_V2`` indexes a dense parameter, AdamW over all of it). It costs a dense
  ``(C, D)`` gradient plus AdamW's two ``(C, D)`` moments — 3x the centres' memory, as with SGD on a dense head.
* ``loss.fused_update``: applies SGD's arithmetic inside backward; it cannot be AdamW and the config refuses it.
"""

from __future__ import annotations

import torch
from torch import nn

from marginface.training.config import OptimConfig

OPTIMIZERS = ("sgd", "adamw")
WEIGHT_DECAY_PARAMS = ("all", "weights")


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full parameter names listed by any submodule's ``no_weight_decay()`` (names relative to that submodule)."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        listed = getattr(module, "no_weight_decay", None)
        if callable(listed):
            names.update(f"{prefix}.{n}" if prefix else n for n in listed())
    return names


def is_decayed(name: str, param: nn.Parameter, excluded: set[str]) -> bool:
    """Whether ``weight_decay_params="weights"`` decays this parameter: a matrix or kernel not listed as excluded."""
    return param.ndim >= 2 and name not in excluded


def parameter_groups(model: nn.Module, weight_decay: float, which: str = "all") -> list[dict]:
    """Param groups for ``model``: one group decayed by ``weight_decay`` (``which="all"``), or a decayed group and
    an undecayed one (``which="weights"``; see the module docstring). Empty groups are left out."""
    if which not in WEIGHT_DECAY_PARAMS:
        raise ValueError(f"weight_decay_params must be one of {WEIGHT_DECAY_PARAMS}, got {which!r}")
    if which == "all":  # one group over model.parameters(): the optimizer the trainer has always built
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    excluded = no_weight_decay_names(model)
    unknown = excluded - {name for name, _ in model.named_parameters()}
    if unknown:
        raise ValueError(f"no_weight_decay() names parameters that do not exist: {sorted(unknown)}")
    decay, plain = [], []
    for name, param in model.named_parameters():
        (decay if is_decayed(name, param, excluded) else plain).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer over every parameter of ``model`` (backbone and class centres) with ``config``'s settings.

    The learning rate set here is ``config.lr``; the trainer overwrites every group's ``lr`` before each step
    (:func:`marginface.training.schedules.learning_rate`).
    """
    groups = parameter_groups(model, config.weight_decay, config.weight_decay_params)
    if config.name == "sgd":
        from marginface.heads import SparseRowSGD

        return SparseRowSGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.name == "adamw":
        beta1, beta2 = config.betas
        return torch.optim.AdamW(groups, lr=config.lr, betas=(beta1, beta2), eps=config.eps,
                                 weight_decay=config.weight_decay)
    raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {config.name!r}")


def wants_sparse_centre_gradients(config: OptimConfig) -> bool:
    """Whether the optimizer can take Partial FC's sparse row gradients (SparseRowSGD can, AdamW cannot)."""
    return config.name == "sgd"
