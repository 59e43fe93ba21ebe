"""Fine-tuning in the trainer: the triplet objectives (ArcFace paper §3.5) and starting from a trained model.

- ``loss.name: triplet``: the triplet loss alone (:class:`marginface.metric.TripletLoss`, parameters in
  ``loss.params``); no class centres, the run's ``loss.*`` tensors are empty.
- ``loss.triplet_weight: lambda > 0`` with a margin loss: ``margin softmax + lambda * triplet`` (triplet parameters
  in ``loss.triplet_params``); the margin loss keeps its centres and its head (dense, chunked or partial_fc).
- ``model.init_from: path``: the backbone weights of a trained model, read through
  :func:`marginface.inference.load_model` (its card is checked against ``model``); ``model.init_loss`` also
  loads its class centres (continuing a softmax training). A resume from the run's own checkpoint overrides both.

Both triplet objectives mine over the global batch under torchrun (see :mod:`marginface.metric.head`) and need
identity-balanced batches (``data.sampler: pk``). This module holds the logic; the trainer calls
:func:`triplet_objective`, :func:`init_from_model` and :func:`loss_stats`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from marginface.training.config import ConfigError, TrainConfig


def uses_triplet(config: TrainConfig) -> bool:
    """Whether the run's objective contains a triplet loss."""
    return config.loss.name == "triplet" or config.loss.triplet_weight > 0


def triplet_params(config: TrainConfig) -> dict[str, Any]:
    return dict(config.loss.params if config.loss.name == "triplet" else config.loss.triplet_params)


def check_triplet_config(config: TrainConfig) -> None:
    """Refuse the settings a triplet objective cannot honour; each error names the field and the fix."""
    from marginface.metric import TripletLoss

    field = "loss.params" if config.loss.name == "triplet" else "loss.triplet_params"
    try:
        TripletLoss(**triplet_params(config))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config field {field}: {err} (known: margin, distance, mining, semi_hard_fallback)") from err
    checks = [
        (config.data.sampler == "pk", "data.sampler", "must be 'pk' for a triplet loss: a random batch holds "
         "almost no two images of one identity, so there is nothing to mine (set data.sampler=pk)"),
        (config.grad_accum_steps == 1, "grad_accum_steps", "must be 1 with a triplet loss: micro-batches would "
         "be mined separately, not as one batch"),
        (not config.loss.sharded, "loss.sharded", "is not supported with a triplet loss"),
        (not config.loss.fused_update, "loss.fused_update", "is not supported with a triplet loss"),
    ]
    for ok, name, message in checks:
        if not ok:
            raise ConfigError(f"config field {name}: {message}")


def triplet_objective(config: TrainConfig, dist_info: Any, placement: Any) -> tuple[nn.Module, nn.Module]:
    """``(loss, head)`` for the trainer: ``loss`` is what checkpoints hold under ``loss.*`` (the triplet loss,
    stateless, or the margin loss with its centres, built by ``placement``, a replicated
    :class:`marginface.training.placement.ClassPlacement`); ``head(embeddings (B, D), labels (B,))`` is the
    objective."""
    from marginface.metric import TripletHead, TripletLoss

    triplet = TripletLoss(**triplet_params(config))
    if config.loss.name == "triplet":
        return triplet, TripletHead(triplet)
    margin = placement.build_loss(config)
    head = placement.build_head(config, margin, dist_info)
    return margin, TripletHead(triplet, margin_head=head, weight=config.loss.triplet_weight)


def loss_stats(head: nn.Module) -> dict[str, float]:
    """Log values of a triplet head's last forward: the triplet term and the fraction of active triplets."""
    from marginface.metric import TripletHead

    if not isinstance(head, TripletHead) or not head.triplet.last_stats:
        return {}
    stats = head.triplet.last_stats
    considered = stats.get("anchors", stats.get("triplets", stats.get("pairs", 0.0)))
    out = {"triplet_active_fraction": stats["active"] / max(considered, 1.0)}
    if head.last_triplet is not None:
        out["triplet_loss"] = float(head.last_triplet)
    return out


# ------------------------------------------------------------------------------------------ model.init_from
def _model_file(path: Path) -> Path:
    return path / "model.safetensors" if path.is_dir() else path


def init_from_model(config: TrainConfig, backbone: nn.Module, loss: nn.Module) -> str:
    """Load ``model.init_from``'s backbone weights into ``backbone`` (and with ``model.init_loss`` its loss state
    into ``loss``), after checking its card against ``config.model``. Returns a line for the log.

    Draws no random numbers (the model is built under ``torch.random.fork_rng``), so a run's initialisation of
    everything else is the same with or without ``init_from``.
    """
    from marginface.inference import load_model

    path = Path(config.model.init_from)
    if not _model_file(path).is_file():
        raise FileNotFoundError(f"model.init_from {path}: no such model file (give a best.safetensors, a "
                                "checkpoint folder or an insightface .pth)")
    with torch.random.fork_rng(devices=[]):
        loaded = load_model(path)
    card, m = loaded.card, config.model
    if loaded.kind != "torch":
        raise ConfigError(f"config field model.init_from: {path} is an ONNX graph; fine-tuning needs torch weights "
                          "(a .safetensors or .pth)")
    wanted = {"backbone": m.backbone, "embedding_size": m.embedding_size, "output": m.output}
    found = {"backbone": card.backbone, "embedding_size": card.embedding_size,
             "output": card.backbone_kwargs.get("output", m.output)}
    wrong = [f"{k} {found[k]!r} (config: model.{k}={wanted[k]!r})" for k in wanted if found[k] != wanted[k]]
    if wrong:
        raise ConfigError(f"config field model.init_from: the card of {path} says {', '.join(wrong)}; set the model "
                          "section to match the model you start from")
    try:
        backbone.load_state_dict(loaded.runner.state_dict())
    except RuntimeError as err:
        raise ConfigError(f"config field model.init_from: the weights of {path} do not fit model "
                          f"{m.backbone}: {err}") from err
    line = f"initialised the backbone from {path} ({card.backbone}, D={card.embedding_size}, trained with " \
           f"{card.loss.get('name', 'unknown loss')})"
    if m.init_loss:
        _init_loss(config, _model_file(path), card, loss)
        line += " and its loss state"
    return line


def _init_loss(config: TrainConfig, path: Path, card: Any, loss: nn.Module) -> None:
    from safetensors.torch import load_file

    if card.loss.get("name") != config.loss.name:
        raise ConfigError(f"config field model.init_loss: {path} was trained with loss {card.loss.get('name')!r} "
                          f"but this run's loss.name is {config.loss.name!r}; its centres belong to that loss")
    state = {k[5:]: v for k, v in load_file(str(path)).items() if k.startswith("loss.")}
    ours = loss.state_dict()
    if not state:
        raise ConfigError(f"config field model.init_loss: {path} holds no loss tensors (a sharded run's "
                          "best.safetensors keeps the backbone only; use its checkpoint folders)")
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    expected = {k: tuple(v.shape) for k, v in ours.items()}
    if shapes != expected:
        raise ConfigError(f"config field model.init_loss: the loss tensors of {path} have shapes {shapes} but this "
                          f"run's loss needs {expected}: the same loss on the same classes (data) is required")
    loss.load_state_dict(state)
