"""Typed training configuration: dataclasses with a docstring per field and checks in ``__post_init__``.

A YAML preset (``configs/<dataset>_<backbone>_<loss>.yaml``) loads into :class:`TrainConfig`; command-line
overrides ``section.field=value`` (values parsed as YAML) are applied on top. Every invalid value raises a
``ValueError`` that names the field.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field (``section.field``)."""


# How a resume treats a change of a field (``training/run_checks.py`` reads it through :func:`resume_kinds`); a field
# without it is breaking: the saved run cannot continue under the new value.
#: the optimisation schedule: allowed with ``--allow-schedule-change``, recorded. (Not momentum / weight decay: the
#: optimizer's saved param groups restore them, so a change would not take effect.)
SCHEDULE = {"resume": "schedule"}
#: how the run is watched or executed, not what it learns: allowed, recorded (on a section: all its fields).
SETTING = {"resume": "setting"}
#: where the class centres live and how their logits are computed (``training/reshard.py`` re-cuts the saved
#: centres): allowed, recorded.
PLACEMENT = {"resume": "placement"}


def _require(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config field {name}: {message}")


@dataclass
class DataConfig:
    """Where training images come from."""

    source: str = "synthetic"
    """'synthetic' (the embedded default, nothing to download), 'folder' (root/<identity>/<image>) or 'rec'
    (an insightface train.rec/train.idx pair; ``path`` is the .rec file or the prefix)."""
    path: str | None = None
    """Folder root or RecordIO path; required unless ``source`` is 'synthetic'."""
    synthetic_identities: int = 200
    """Synthetic training identities (source 'synthetic')."""
    synthetic_images_per_identity: int = 20
    """Synthetic images per identity."""
    synthetic_seed: int = 0
    """Seed of the synthetic population."""
    flip: bool = True
    """Random horizontal flip, p=0.5: the ArcFace paper's only augmentation."""
    num_workers: int = field(default=0, metadata=SETTING)
    """DataLoader worker processes (0: load in the training process)."""
    exclude_identities: str | None = None
    """Plain file of identity folder names to leave out (``marginface clean overlap``); source 'folder'."""
    image_list: str | None = None
    """Plain file of ``identity/file`` names to train on (``marginface clean outliers``); source 'folder'."""
    sampler: str = "random"
    """'random' (a shuffle of all images) or 'pk' (P identities x K images per batch, P = batch_size / K;
    what a triplet loss needs; ``training/pk_sampler.py``)."""
    pk_images_per_identity: int = 4
    """K of the 'pk' sampler (>= 2)."""
    pk_small_identities: str = "replace"
    """'pk' sampler, identities with fewer than K images: 'replace' (their images repeat) or 'skip'."""

    def __post_init__(self) -> None:
        _require(self.source in ("synthetic", "folder", "rec"), "data.source",
                 f"must be 'synthetic', 'folder' or 'rec', got {self.source!r}")
        if self.source != "synthetic":
            _require(bool(self.path), "data.path", f"is required for source {self.source!r}")
        _require(self.synthetic_identities >= 2, "data.synthetic_identities", "must be >= 2")
        _require(self.synthetic_images_per_identity >= 1, "data.synthetic_images_per_identity", "must be >= 1")
        _require(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        for name in ("exclude_identities", "image_list"):
            _require(getattr(self, name) is None or self.source == "folder", f"data.{name}",
                     "needs source 'folder' (for a .rec, pass the list to `marginface prepare rec`)")
        _require(self.sampler in ("random", "pk"), "data.sampler", f"must be 'random' or 'pk', got {self.sampler!r}")
        _require(self.pk_images_per_identity >= 2, "data.pk_images_per_identity", "must be >= 2 (a positive pair)")
        _require(self.pk_small_identities in ("replace", "skip"), "data.pk_small_identities",
                 f"must be 'replace' or 'skip', got {self.pk_small_identities!r}")


@dataclass
class ModelConfig:
    """The backbone (``marginface.backbones.create``)."""

    backbone: str = "iresnet50"
    """Registry name (``marginface.backbones.available()``): iresnet18/34/50/100/200, mobilefacenet, vit_t/s/b/l,
    mobilenet, densenet121, tiny28."""
    embedding_size: int = 512
    """D, the embedding dimension."""
    dropout: float = 0.0
    """Dropout before the embedding FC (output option E)."""
    output: str = "E"
    """Embedding-layer option A-E (E = BN-Dropout-FC-BN, the ArcFace paper's choice)."""
    checkpointing: bool = field(default=False, metadata=SETTING)
    """Activation checkpointing: less training memory, about one extra forward of compute."""
    params: dict[str, Any] = field(default_factory=dict)
    """Model-specific keyword arguments of ``backbones.create``, e.g. {drop_path: 0.05, mask_ratio: 0.0} (ViTs),
    {se: true} (IR-ResNets); recorded in the model card."""
    init_from: str | None = None
    """Fine-tuning: start from this model's backbone weights (``best.safetensors``, a checkpoint folder, an
    insightface .pth); its card must name the same backbone, embedding_size and output. A resume overrides it."""
    init_loss: bool = False
    """With ``init_from``: also load the loss's class centres and state from it (same loss and classes):
    continuing a margin-softmax training, the fair baseline of a fine-tuning."""
    init_centres: str = "random"
    """The margin loss's class centres at step 0: 'random' (the loss's own N(0, 0.01^2)) or 'class_means' (with
    ``init_from``: per class, the L2-normalised mean of the L2-normalised embeddings of its training images, by
    the starting backbone in eval mode, no flip), so the first steps' gradients do not come from random centres."""
    freeze_bn: bool = False
    """BatchNorm layers normalise with their running statistics and keep them (eval-mode BN) while training;
    their scale and shift still learn. For fine-tuning with small batches: the training forward at step 0 is
    then the starting model's own function (batch statistics of 64 images are not the model's)."""

    def __post_init__(self) -> None:
        _require(isinstance(self.params, dict), "model.params", "must be a mapping of argument names to values")
        _require(self.embedding_size >= 2, "model.embedding_size", "must be >= 2")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", f"must lie in [0, 1), got {self.dropout}")
        _require(self.output in tuple("ABCDE"), "model.output", f"must be one of A-E, got {self.output!r}")
        _require(not self.init_loss or bool(self.init_from), "model.init_loss", "needs model.init_from")
        _require(self.init_centres in ("random", "class_means"), "model.init_centres",
                 f"must be 'random' or 'class_means', got {self.init_centres!r}")
        if self.init_centres == "class_means":
            _require(bool(self.init_from), "model.init_centres",
                     "'class_means' needs model.init_from (the model whose embeddings give the means)")
            _require(not self.init_loss, "model.init_centres",
                     "'class_means' and model.init_loss=true both set the centres: keep one")


@dataclass
class LossConfig:
    """The margin loss (``marginface.losses.create``) and the head that applies it."""

    name: str = "arcface"
    """Registry name (``marginface losses`` lists them)."""
    params: dict[str, Any] = field(default_factory=dict)
    """The loss's parameters by full name, e.g. {scale: 64, margin: 0.5}; defaults are the papers'."""
    head: str = "dense"
    """'dense' (B x C logits), 'chunked' (never materialises B x C) or 'partial_fc' (sampled centres)."""
    chunk_size: int | None = field(default=None, metadata=PLACEMENT)
    """Classes per chunk for the chunked / partial_fc heads; null: sized from the batch (4 MiB temporaries on the
    CPU, 8192 classes on accelerators; docs/heads.md)."""
    sample_rate: float = 1.0
    """Fraction of class centres sampled per step by the partial_fc head, in (0, 1]."""
    sharded: bool = field(default=False, metadata=PLACEMENT)
    """Under torchrun: split the class centres over the ranks (chunked or partial_fc head; each rank holds
    C / world_size rows, embeddings are all-gathered). Each rank checkpoints its own shard."""
    fused_update: bool = field(default=False, metadata=PLACEMENT)
    """Chunked head only: apply the centres' SGD update inside backward, chunk by chunk, so their (C, D) gradient
    never exists (grad_accum_steps 1, no fp16; under torchrun only with loss.sharded)."""
    triplet_weight: float = 0.0
    """lambda of the combined objective margin softmax + lambda * triplet (0: none). With ``name: triplet`` the
    triplet loss is the whole objective and its parameters are ``params``."""
    triplet_params: dict[str, Any] = field(default_factory=dict)
    """Triplet parameters of the combined objective: margin, distance, mining, semi_hard_fallback
    (``marginface.triplet.TripletLoss``)."""

    def __post_init__(self) -> None:
        _require(isinstance(self.params, dict), "loss.params", "must be a mapping of parameter names to values")
        _require(self.head in ("dense", "chunked", "partial_fc"), "loss.head",
                 f"must be 'dense', 'chunked' or 'partial_fc', got {self.head!r}")
        _require(self.chunk_size is None or self.chunk_size >= 1, "loss.chunk_size",
                 f"must be >= 1 or null, got {self.chunk_size}")
        _require(0.0 < self.sample_rate <= 1.0, "loss.sample_rate", f"must lie in (0, 1], got {self.sample_rate}")
        _require(not self.fused_update or self.head == "chunked", "loss.fused_update",
                 f"needs loss.head 'chunked', got {self.head!r}")
        _require(not self.sharded or self.head in ("chunked", "partial_fc"), "loss.sharded",
                 f"needs loss.head 'chunked' or 'partial_fc' (a sharded head is chunked), got {self.head!r}")
        _require(self.triplet_weight >= 0, "loss.triplet_weight", f"must be >= 0, got {self.triplet_weight}")
        _require(not (self.name == "triplet" and self.triplet_weight), "loss.triplet_weight",
                 "is for a margin loss + triplet; with loss.name triplet put its parameters in loss.params")
        if self.name != "triplet":  # no class centres; check_triplet_config checks the triplet parameters
            check_loss_params(self.name, self.params)


def check_loss_params(name: str, params: dict[str, Any], embedding_size: int | None = None) -> None:
    """Check the loss name and its parameter names (and, given ``embedding_size``, their values by building the
    loss on a few classes) now, before any data is scanned. Raises ConfigError naming the field and the valid
    ones."""
    from marginface import losses

    _require(name in losses.available(), "loss.name",
             f"unknown loss {name!r}; available: {', '.join(losses.available())}")
    known = losses.parameters(name)
    unknown = [key for key in params if key not in known]
    if unknown and not losses.accepts_any_parameter(name):
        import difflib

        hint = difflib.get_close_matches(unknown[0], list(known), n=1)
        listed = ", ".join(f"{k} (default {v!r})" for k, v in known.items()) or "none"
        raise ConfigError(f"config field loss.params: loss {name!r} has no parameter {unknown[0]!r}"
                          + (f" (did you mean {hint[0]!r}?)" if hint else "")
                          + f"; its parameters: {listed} (marginface losses --params lists every loss's)")
    if embedding_size is not None:
        try:
            key = json.dumps(params, sort_keys=True)
        except (TypeError, ValueError):  # a value JSON cannot hold: check it without the memo
            _check_loss_values.__wrapped__(name, embedding_size, params)
        else:
            _check_loss_values(name, embedding_size, key)


@functools.lru_cache(maxsize=256)
def _check_loss_values(name: str, embedding_size: int, params: str | dict[str, Any]) -> None:
    """Check the values of a loss's parameters (``params``: a dict, or its JSON) with the loss's own constructor,
    once per distinct setting: each loss's ``__init__`` is the one place its value rules live (45 checks in 17
    losses), so they are not copied into a second validator; the memo keeps a config's re-construction
    (``dataclasses.replace``, overrides, a study's arms) from building the loss again."""
    import torch

    from marginface import losses

    values = json.loads(params) if isinstance(params, str) else params
    with torch.random.fork_rng(devices=[]):  # building it draws random centres: leave the run's seed alone
        try:
            # 8 classes: some losses need more than 2 (AdaCos's scale is sqrt(2) log(C - 1))
            losses.create(name, embedding_size=embedding_size, num_classes=8, **values)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"config field loss.params: {err}") from err


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (``training/optim.py``, ``training/schedules.py``).

    The default is the ArcFace recipe: SGD, lr 0.1, momentum 0.9, weight decay 5e-4, lr / 10 at fixed steps.
    The face-ViT recipe is AdamW with warm-up and polynomial or cosine decay (``configs/*vit*``). The settings
    apply to the backbone and to the loss's class centres alike.
    """

    name: str = "sgd"
    """'sgd' (SparseRowSGD: torch's SGD, sparse Partial FC rows) or 'adamw' (torch.optim.AdamW)."""
    lr: float = field(default=0.1, metadata=SCHEDULE)
    """Initial learning rate (for the paper's batch of 512; scale linearly for other batch sizes)."""
    momentum: float = 0.9
    """SGD momentum (optim.name 'sgd')."""
    weight_decay: float = 5e-4
    """Weight decay: L2 added to the gradient for SGD, decoupled (p *= 1 - lr * wd) for AdamW."""
    weight_decay_params: str = "all"
    """'all' (every parameter, as the ArcFace paper and arcface_torch) or 'weights' (no decay on biases, norms,
    PReLU slopes and a module's ``no_weight_decay()`` names such as a ViT's position embedding)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW's moment decay rates (beta1, beta2)."""
    eps: float = 1e-8
    """AdamW's denominator epsilon."""
    schedule: str = "step"
    """'step' (x gamma at each milestone), 'cosine' or 'poly' (decay from lr to min_lr over the steps after the
    warm-up; poly: (1 - t)^power, arcface_torch's ViT schedule with power 2)."""
    power: float = 2.0
    """Exponent of the 'poly' schedule."""
    min_lr: float = 0.0
    """Learning rate the 'cosine' and 'poly' schedules decay to at the end of training."""
    milestones: list[int] = field(default_factory=list, metadata=SCHEDULE)
    """Steps (epochs when ``epochs`` > 0) at which the learning rate is multiplied by ``gamma``."""
    gamma: float = field(default=0.1, metadata=SCHEDULE)
    """Decay factor at each milestone."""
    warmup_steps: int = field(default=0, metadata=SCHEDULE)
    """Linear warm-up from 0 over this many steps (0: none)."""

    def __post_init__(self) -> None:
        _require(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _require(0.0 <= self.momentum < 1.0, "optim.momentum", f"must lie in [0, 1), got {self.momentum}")
        _require(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        _require(list(self.milestones) == sorted(self.milestones) and all(m > 0 for m in self.milestones),
                 "optim.milestones", f"must be increasing positive steps, got {self.milestones}")
        _require(0.0 < self.gamma <= 1.0, "optim.gamma", f"must lie in (0, 1], got {self.gamma}")
        _require(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
        _require(self.name in ("sgd", "adamw"), "optim.name", f"must be 'sgd' or 'adamw', got {self.name!r}")
        _require(self.weight_decay_params in ("all", "weights"), "optim.weight_decay_params",
                 f"must be 'all' or 'weights', got {self.weight_decay_params!r}")
        _require(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas), "optim.betas",
                 f"must be two rates in [0, 1), got {self.betas}")
        _require(self.eps > 0, "optim.eps", f"must be > 0, got {self.eps}")
        _require(self.schedule in ("step", "cosine", "poly"), "optim.schedule",
                 f"must be 'step', 'cosine' or 'poly', got {self.schedule!r}")
        _require(self.schedule == "step" or not self.milestones, "optim.milestones",
                 f"only apply to schedule 'step' (this one is {self.schedule!r}): remove them")
        _require(self.power > 0, "optim.power", f"must be > 0, got {self.power}")
        _require(0.0 <= self.min_lr < self.lr, "optim.min_lr", f"must lie in [0, optim.lr), got {self.min_lr}")


@dataclass
class ValidationConfig:
    """Verification during training; the best checkpoint (by mean accuracy) is kept."""

    bins: list[str] = field(default_factory=list)
    """insightface verification .bin files (lfw.bin, cfp_fp.bin, agedb_30.bin ...)."""
    synthetic_pairs: int = 0
    """Pairs of held-out synthetic identities to verify (0: none); source 'synthetic' only."""
    synthetic_identities: int = 50
    """Held-out synthetic identities the pairs are drawn from (disjoint from training)."""
    every: int = 0
    """Validate every this many steps (0: only at the end)."""
    batch_size: int = 64
    """Batch size of embedding extraction."""

    def __post_init__(self) -> None:
        _require(self.synthetic_pairs >= 0, "validation.synthetic_pairs", "must be >= 0")
        _require(self.every >= 0, "validation.every", "must be >= 0")
        _require(self.batch_size >= 1, "validation.batch_size", "must be >= 1")


@dataclass
class AnalysisConfig:
    """Training-time analysis (``marginface.analysis``); off by default."""

    theta_every: int = 0
    """Every this many steps, log theta_y / nearest non-target angle statistics (quantiles, 5-degree histogram)
    and the mean target logit of the training batch (no extra forward); 0: off. ``marginface plot theta``."""

    def __post_init__(self) -> None:
        _require(self.theta_every >= 0, "analysis.theta_every", f"must be >= 0, got {self.theta_every}")


@dataclass
class TrainConfig:
    """One training run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig, metadata=SETTING)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    batch_size: int = 512
    """Global batch size (split evenly over processes under torchrun)."""
    grad_accum_steps: int = field(default=1, metadata=SETTING)
    """Split each process's share of the batch into this many micro-batches and accumulate their gradients
    (same gradient, less activation memory). Running loss state advances once per micro-batch forward."""
    steps: int = field(default=1000, metadata=SCHEDULE)
    """Optimizer steps to train (ignored when ``epochs`` is set). 0 with ``model.init_from``: no training, the
    starting model is checkpointed as step 0 (the "as is" arm of a fine-tuning study)."""
    epochs: float = field(default=0.0, metadata=SCHEDULE)
    """When > 0: train this many passes over the data instead of ``steps`` (steps = ceil(epochs x images /
    batch_size), fixed when the data is known), and ``optim.milestones`` (fractions allowed) and
    ``optim.warmup_steps`` count epochs rather than steps."""
    precision: str = field(default="fp32", metadata=SCHEDULE)
    """'fp32', 'bf16' (autocast) or 'fp16' (autocast + GradScaler). The head always computes in float32."""
    grad_clip: float = field(default=0.0, metadata=SCHEDULE)
    """Clip the global gradient norm to this value (0: no clipping)."""
    seed: int = 0
    """Seed of initialisation, data order and augmentation."""
    deterministic: bool = field(default=False, metadata=SETTING)
    """torch.use_deterministic_algorithms: bit-reproducible runs and exact resume, slower."""
    output_dir: str = field(default="runs/default", metadata=SETTING)
    """Run folder: checkpoints, logs, figures."""
    log_every: int = field(default=10, metadata=SETTING)
    """Write a log row every this many steps."""
    checkpoint_every: int = field(default=500, metadata=SETTING)
    """Checkpoint every this many steps (and always at the end)."""
    device: str = field(default="auto", metadata=SETTING)
    """'auto' (cuda when available), 'cpu' or 'cuda'."""
    channels_last: bool = field(default=False, metadata=SETTING)
    """Memory format of the backbone's input (faster convolutions with bf16 on GPUs)."""

    def __post_init__(self) -> None:
        _require(self.batch_size >= 2, "batch_size", f"must be >= 2, got {self.batch_size}")
        _require(self.steps >= 0, "steps", f"must be >= 1 (0: only with model.init_from), got {self.steps}")
        _require(self.steps >= 1 or bool(self.model.init_from) and self.epochs == 0, "steps",
                 "0 (no training: the starting model checkpointed as is) needs model.init_from and epochs 0")
        _require(self.epochs >= 0, "epochs", f"must be >= 0 (0: use steps), got {self.epochs}")
        _require(self.grad_accum_steps >= 1, "grad_accum_steps", f"must be >= 1, got {self.grad_accum_steps}")
        _require(self.precision in ("fp32", "bf16", "fp16"), "precision",
                 f"must be 'fp32', 'bf16' or 'fp16', got {self.precision!r}")
        _require(self.grad_clip >= 0, "grad_clip", "must be >= 0")
        _require(self.log_every >= 1, "log_every", "must be >= 1")
        _require(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        _require(self.device in ("auto", "cpu", "cuda"), "device", f"must be auto, cpu or cuda, got {self.device!r}")
        if self.loss.fused_update:  # every backward is an optimizer step of the centres (heads/fused_update.py)
            _require(self.grad_accum_steps == 1, "loss.fused_update",
                     "updates the centres in every backward: set grad_accum_steps=1")
            _require(self.precision != "fp16", "loss.fused_update",
                     "cannot see fp16's gradient scaling: use precision bf16 or fp32")
            _require(self.optim.name == "sgd", "loss.fused_update",
                     "applies SGD's update inside backward: use optim.name=sgd or loss.fused_update=false")
        if self.optim.schedule != "step" and self.epochs == 0 and self.steps:  # epochs: resolve_epochs checks it
            _require(self.optim.warmup_steps < self.steps, "optim.warmup_steps",
                     f"must be < steps ({self.steps}) for schedule {self.optim.schedule!r}")
        if self.data.sampler == "pk":
            _require(self.batch_size % self.data.pk_images_per_identity == 0, "batch_size",
                     f"must be P x K: a multiple of data.pk_images_per_identity={self.data.pk_images_per_identity}")
        if uses_triplet(self):
            check_triplet_config(self)
        if self.model.init_centres == "class_means":
            _require(self.loss.name != "triplet", "model.init_centres",
                     "'class_means' initialises a margin loss's centres; loss.name triplet has none (set 'random')")
            _require(not self.loss.sharded, "model.init_centres", "'class_means' is not supported with loss.sharded")
        if self.validation.synthetic_pairs:
            _require(self.data.source == "synthetic", "validation.synthetic_pairs",
                     "needs data.source 'synthetic' (held-out synthetic identities)")
        if self.loss.name != "triplet":
            check_loss_params(self.loss.name, self.loss.params, self.model.embedding_size)


# ----------------------------------------------------------------------------- triplet objectives
def uses_triplet(config: TrainConfig) -> bool:
    """Whether the run's objective contains a triplet loss."""
    return config.loss.name == "triplet" or config.loss.triplet_weight > 0


def triplet_params(config: TrainConfig) -> dict[str, Any]:
    return dict(config.loss.params if config.loss.name == "triplet" else config.loss.triplet_params)


def check_triplet_config(config: TrainConfig) -> None:
    """Refuse the settings a triplet objective cannot honour; each error names the field and the fix."""
    from marginface.triplet import TripletLoss

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


# ----------------------------------------------------------------------------- loading
def resume_kinds(cls: type | None = None, prefix: str = "") -> dict[str, str]:
    """``{flattened key: "schedule" | "setting" | "placement"}`` of the fields of ``cls`` (default
    :class:`TrainConfig`) that declare how a resume treats their change (``field(metadata=SCHEDULE)`` ...); a
    section declared as a whole is one key ending in ``.`` (e.g. ``"validation."``)."""
    cls = cls or TrainConfig
    hints = get_type_hints(cls)
    out: dict[str, str] = {}
    for item in dataclasses.fields(cls):
        kind, hint = item.metadata.get("resume"), hints[item.name]
        section = dataclasses.is_dataclass(hint)
        if kind:
            out[f"{prefix}{item.name}{'.' if section else ''}"] = kind
        elif section:
            out.update(resume_kinds(hint, f"{prefix}{item.name}."))
    return out


def build_section(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, recursing into nested sections; unknown keys are errors
    (named with ``prefix``, e.g. ``search.``). Also builds the sections of configs that extend a run's (the search)."""
    if not isinstance(values, dict):
        raise ConfigError(f"config section {prefix or 'root'}: expected a mapping, got {type(values).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = prefix.rstrip(".") or "root"
        raise ConfigError(f"config section {where}: unknown field(s) {unknown}; known: {sorted(names)}")
    kwargs = {}
    for key, value in values.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = build_section(hint, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, hint, f"{prefix}{key}")
    return cls(**kwargs)


_YAML12_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Check a scalar against its annotation (ints are accepted for floats); name the field when it is wrong."""
    simple = {int: int, float: (int, float), str: str, bool: bool}
    if hint is float and isinstance(value, str) and _YAML12_FLOAT.fullmatch(value.strip()):
        value = float(value)  # "1e-3": a float in YAML 1.2 and to a person; PyYAML (YAML 1.1) reads a string
    if hint in simple and value is not None:
        if hint is not bool and isinstance(value, bool) or not isinstance(value, simple[hint]):
            raise ConfigError(f"config field {name}: expected {hint.__name__}, got {value!r}")
        return float(value) if hint is float else value
    return value


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a nested mapping (the YAML document)."""
    return build_section(TrainConfig, values or {}, "")


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.field=value`` overrides (value parsed as YAML) to a nested mapping, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. optim.lr=0.05")
        key, raw = item.split("=", 1)
        node = values
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return values


def resolve_epochs(config: TrainConfig, num_images: int) -> TrainConfig:
    """``config`` in steps: with ``epochs`` > 0, its steps, milestones and warm-up converted from epochs.

    One epoch is ceil(num_images / batch_size) steps; milestones round to the nearest step. The result has
    ``epochs`` 0, so resolving twice changes nothing (and the run's config.json shows the steps used).
    """
    if config.epochs <= 0:
        return config
    if num_images < 1:
        raise ConfigError("epochs: the training data holds no images")
    per_epoch = math.ceil(num_images / config.batch_size)
    optim = dataclasses.replace(
        config.optim, milestones=[max(1, round(m * per_epoch)) for m in config.optim.milestones],
        warmup_steps=round(config.optim.warmup_steps * per_epoch))
    return dataclasses.replace(config, steps=max(1, math.ceil(config.epochs * per_epoch)), epochs=0.0, optim=optim)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Load a YAML preset (or the defaults when ``path`` is None) and apply overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist; presets live in configs/")
        values = yaml.safe_load(path.read_text()) or {}
    return config_from_dict(apply_overrides(values, overrides or []))
