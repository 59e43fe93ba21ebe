"""Fine-tuning in the trainer: the triplet objectives (ArcFace paper §3.5) and starting from a trained model.

- ``loss.name: triplet``: the triplet loss alone (:class:`marginface.triplet.TripletLoss`, parameters in
  ``loss.params``); no class centres, the run's ``loss.*`` tensors are empty.
- ``loss.triplet_weight: lambda > 0`` with a margin loss: ``margin softmax + lambda * triplet`` (triplet parameters
  in ``loss.triplet_params``); the margin loss keeps its centres and its head (dense, chunked or partial_fc).
- ``model.init_from: path``: the backbone weights of a trained model, read through
  :func:`marginface.models.load_model` (its card is checked against ``model``; an MXNet zoo prefix works
  too); ``model.init_loss`` also loads its class centres (continuing a softmax training). A resume from the
  run's own checkpoint overrides both. The trainer feeds ``(x - 127.5) / 127.5`` RGB; a model whose card says
  otherwise (insightface's MXNet MobileFaceNet: ``(x - 127.5) / 128``, normalised inside its graph) gets its
  own normalisation folded into its first convolution (:func:`adopt_input_contract`), so the fine-tuned
  model at step 0 computes exactly what the original file computes on the same pixels.
- ``model.init_centres: class_means``: new class centres = the starting model's own class means
  (:func:`class_mean_centres`) instead of random ones.
- ``model.freeze_bn``: BatchNorm layers in eval mode while training (:func:`set_train_mode`).

Both triplet objectives mine over the global batch under torchrun (see :mod:`marginface.triplet.head`) and need
identity-balanced batches (``data.sampler: pk``). This module holds the logic; the trainer calls
:func:`triplet_objective`, :func:`init_from_model` and :func:`loss_stats`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from marginface.runs.layout import model_file

# check_triplet_config and uses_triplet moved to training/config.py (which calls them: no import cycle); importing
# them from here is kept for one release
from marginface.training.config import (  # noqa: F401
    ConfigError,
    TrainConfig,
    check_triplet_config,
    triplet_params,
    uses_triplet,
)


def triplet_objective(config: TrainConfig, dist_info: Any, placement: Any) -> tuple[nn.Module, nn.Module]:
    """``(loss, head)`` for the trainer: ``loss`` is what checkpoints hold under ``loss.*`` (the triplet loss,
    stateless, or the margin loss with its centres, built by ``placement``, a replicated
    :class:`marginface.training.placement.ClassPlacement`); ``head(embeddings (B, D), labels (B,))`` is the
    objective."""
    from marginface.triplet import TripletHead, TripletLoss

    triplet = TripletLoss(**triplet_params(config))
    if config.loss.name == "triplet":
        return triplet, TripletHead(triplet)
    margin = placement.build_loss(config)
    head = placement.build_head(config, margin, dist_info)
    return margin, TripletHead(triplet, margin_head=head, weight=config.loss.triplet_weight)


def loss_stats(head: nn.Module) -> dict[str, float]:
    """Log values of a triplet head's last forward: the triplet term and the fraction of active triplets."""
    from marginface.triplet import TripletHead

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
    return model_file(path)


def _is_model_path(path: Path) -> bool:
    """A model file, a checkpoint folder or an MXNet zoo model (``prefix``, ``prefix-0000.params``)."""
    from marginface.models.mxnet_format import mxnet_files

    if _model_file(path).is_file():
        return True
    try:
        files = mxnet_files(path)
    except FileNotFoundError:  # a symbol without weights: load_model says so by name
        return True
    return files is not None and files[0].is_file()


def init_from_model(config: TrainConfig, backbone: nn.Module, loss: nn.Module) -> str:
    """Load ``model.init_from``'s backbone weights into ``backbone`` (and with ``model.init_loss`` its loss state
    into ``loss``), after checking its card against ``config.model``. Returns a line for the log.

    Draws no random numbers (the model is built under ``torch.random.fork_rng``), so a run's initialisation of
    everything else is the same with or without ``init_from``.
    """
    from marginface.models.load import load_model

    path = Path(config.model.init_from)
    if not _is_model_path(path):
        raise FileNotFoundError(f"model.init_from {path}: no such model file (give a best.safetensors, a "
                                "checkpoint folder, an insightface .pth or an MXNet prefix with its "
                                "prefix-symbol.json and prefix-0000.params)")
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
    if folded := adopt_input_contract(backbone, card.input, path):
        line += f"; {folded}"
    if m.init_loss:
        _init_loss(config, _model_file(path), card, loss)
        line += " and its loss state"
    return line


def _init_loss(config: TrainConfig, path: Path, card: Any, loss: nn.Module) -> None:
    from marginface.models.load import read_tensors

    if card.loss.get("name") != config.loss.name:
        raise ConfigError(f"config field model.init_loss: {path} was trained with loss {card.loss.get('name')!r} "
                          f"but this run's loss.name is {config.loss.name!r}; its centres belong to that loss")
    state = read_tensors(path, "loss.")
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


# ------------------------------------------------------------------------------------------ input contract
#: what the trainer (and ``marginface eval``) feed every backbone: RGB planes, (pixel - 127.5) / 127.5
TRAINER_MEAN, TRAINER_STD = 127.5, 127.5


def first_input_conv(backbone: nn.Module, source: Any = "the model") -> nn.Conv2d:
    """The one ``Conv2d`` with 3 input channels: the layer that sees the pixels (every backbone has one)."""
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3]
    if len(convs) != 1:
        raise ConfigError(f"config field model.init_from: {source} has {len(convs)} convolutions over the 3 input "
                          "planes, so its input normalisation cannot be folded into one; convert it to the "
                          "trainer's contract first (RGB, (x - 127.5) / 127.5)")
    return convs[0]


@torch.no_grad()
def adopt_input_contract(backbone: nn.Module, contract: Any, source: Any = "the model") -> str:
    """Make ``backbone`` (weights as loaded) take the trainer's input instead of its card's ``contract``.

    The card's input plane k is ``(p[src(k)] - mean_k) / std_k`` with ``src(k) = k`` (RGB) or ``2 - k`` (BGR);
    the trainer's plane c is ``x_c = (p_c - 127.5) / 127.5``. With ``mean_k = 127.5`` the card's plane is
    ``x[src(k)] * 127.5 / std_k``, a per-plane scale (and a plane permutation) that the first convolution absorbs
    exactly: ``w'[:, src(k)] = w[:, k] * 127.5 / std_k`` — its zero padding stays zero, its bias is untouched.
    A mean other than 127.5 would shift the padded border too (not foldable): refused.

    Returns a line for the log ('' when the contract already is the trainer's). Raises :class:`ConfigError` for
    an input size other than 112 or a mean other than 127.5.
    """
    mean, std, bgr = [float(v) for v in contract.mean], [float(v) for v in contract.std], contract.channel_order
    if contract.size != 112:
        raise ConfigError(f"config field model.init_from: {source} takes {contract.size}x{contract.size} crops; the "
                          "trainer feeds 112x112 (align the data for it, or start from a 112x112 model)")
    if mean == [TRAINER_MEAN] * 3 and std == [TRAINER_STD] * 3 and bgr == "RGB":
        return ""
    if mean != [TRAINER_MEAN] * 3:
        raise ConfigError(f"config field model.init_from: {source} normalises its input with mean {mean}; only a "
                          f"mean of {TRAINER_MEAN} (the trainer's) folds exactly into the first convolution")
    conv = first_input_conv(backbone, source)
    src = [2, 1, 0] if bgr == "BGR" else [0, 1, 2]
    weight = conv.weight.detach().clone()
    for k in range(3):
        conv.weight[:, src[k]] = weight[:, k] * (TRAINER_STD / std[k])
    return (f"its input contract ({bgr}, (x - {mean[0]:g}) / {std}) folded into its first convolution: it now "
            f"takes the trainer's RGB (x - {TRAINER_MEAN:g}) / {TRAINER_STD:g}")


# ------------------------------------------------------------------------------------------ model.freeze_bn
def set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    """``model.train()``, with every BatchNorm back in eval mode when ``freeze_bn`` (running statistics used and
    kept; the BN scale and shift still get gradients)."""
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


# ------------------------------------------------------------------------------------------ model.init_centres
@torch.no_grad()
def class_mean_centres(backbone: nn.Module, dataset: Any, num_classes: int, batch_size: int = 128,
                       device: torch.device | str = "cpu", num_workers: int = 0) -> torch.Tensor:
    """``(C, D)`` float32 class centres: per class c, ``normalize(sum_i normalize(f(x_i)))`` over its images.

    ``f`` is ``backbone`` in eval mode (its mode is restored after), ``dataset`` yields ``(image (3, 112, 112)
    in [-1, 1], label)`` unflipped; the sums are float64. Every class must have an image.
    """
    from torch.utils.data import DataLoader

    was_training = backbone.training
    backbone.eval()
    sums = None
    counts = torch.zeros(num_classes, dtype=torch.int64)
    try:
        for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
            emb = torch.nn.functional.normalize(backbone(images.to(device)).double(), dim=1).cpu()
            sums = torch.zeros(num_classes, emb.shape[1], dtype=torch.float64) if sums is None else sums
            labels = torch.as_tensor(labels, dtype=torch.int64)
            sums.index_add_(0, labels, emb)
            counts += torch.bincount(labels, minlength=num_classes)
    finally:
        backbone.train(was_training)
    if sums is None or (counts == 0).any():
        empty = [] if sums is None else torch.nonzero(counts == 0).flatten()[:5].tolist()
        raise ValueError(f"class means: classes {empty or 'all'} have no image in the training data")
    return torch.nn.functional.normalize(sums, dim=1).float()


def init_centres_from_class_means(config: TrainConfig, backbone: nn.Module, loss: nn.Module, dataset: Any,
                                  device: torch.device | str) -> str:
    """Set the margin loss's centres (``loss.weight``, (C, D)) to the starting backbone's class means; a log line.

    Raises :class:`ConfigError` for a loss whose centres are not one (C, D) direction per class (sub-centres)
    or whose logits use the centres' norm (plain softmax)."""
    import time

    weight = getattr(loss, "weight", None)
    expected = (dataset.num_classes, config.model.embedding_size)
    if weight is None or tuple(weight.shape) != expected:
        shape = None if weight is None else tuple(weight.shape)
        raise ConfigError(f"config field model.init_centres: class_means needs one centre per class, shape "
                          f"{expected}, but loss {config.loss.name!r} has centres of shape {shape}")
    if not getattr(loss, "normalizes_features", True):
        raise ConfigError(f"config field model.init_centres: loss {config.loss.name!r} uses raw (unnormalised) "
                          "centres; class means are unit directions for the normalised losses (set 'random')")
    start = time.perf_counter()
    centres = class_mean_centres(backbone, dataset, dataset.num_classes, config.validation.batch_size, device,
                                 config.data.num_workers)
    with torch.no_grad():
        weight.copy_(centres.to(weight.device, weight.dtype))
    return (f"class centres: the starting model's class means over {len(dataset)} images of "
            f"{dataset.num_classes} identities ({time.perf_counter() - start:.0f} s)")
