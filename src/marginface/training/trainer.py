"""The trainer: ``Trainer(config).setup()`` then ``.fit()``.

One optimizer (``optim.name``: SGD by default, :class:`marginface.heads.SparseRowSGD`, which is torch's SGD for
dense gradients and updates only the visited rows for Partial FC's sparse ones; or AdamW — see
``training/optim.py``) trains the backbone *and* the loss's class centres with the same settings, as in the
ArcFace paper. Under ``torchrun`` the backbone and the head are wrapped
together in one DistributedDataParallel, so the class-centre gradients are averaged too and the loss's running
state (buffers) is broadcast from rank 0 at every forward.

The public surface, for the app layer (``marginface.experiments``) and anyone driving training from code:
``Trainer(config, dataset=..., callbacks=[...])``, ``setup()``, ``fit()``, ``train_step`` / ``run_steps``,
``evaluate`` (the one validation loop), ``validate``, ``snapshot()`` / ``restore()``, ``log``, ``save``; callbacks
(:class:`Callback`) see ``before_fit``, ``after_step`` and ``after_validation``.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from marginface import backbones
from marginface.files import atomic_write, atomic_write_text
from marginface.losses.angles import ThetaRecorder
from marginface.runs.layout import RunDir
from marginface.runs.log import append_log, read_log, truncate_log
from marginface.training import checkpoint as ckpt
from marginface.training import finetune
from marginface.training.config import TrainConfig, config_to_dict, resolve_epochs
from marginface.training.data import FlipByIndex, StepBatchSampler, build_dataset
from marginface.training.distributed import DistInfo, barrier, init_from_env, mean_across_ranks
from marginface.training.interrupt import StopRequest, ignore_stop_signals
from marginface.training.pk_sampler import pk_batch_sampler
from marginface.training.placement import ClassPlacement
from marginface.training.reshard import SavedStep, load_for_process
from marginface.training.run_checks import check_resume, record_start
from marginface.training.run_report import banner, exclude_pause, validation_line
from marginface.training.schedules import learning_rate

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from marginface.evaluation.verification import VerificationResult


def create_backbone(cfg: TrainConfig) -> nn.Module:
    """The run's backbone; a ``model.params`` key the backbone does not take (or one that repeats a field of its
    own, e.g. ``dropout``) is a ConfigError naming the field, not a TypeError from deep inside the constructor."""
    from marginface.training.config import ConfigError

    model = cfg.model
    try:
        return backbones.create(model.backbone, embedding_size=model.embedding_size, dropout=model.dropout,
                                output=model.output, checkpointing=model.checkpointing, **model.params)
    except TypeError as err:
        raise ConfigError(f"config field model.params {model.params}: backbone {model.backbone!r} refuses them "
                          f"({err}); use its keyword arguments (marginface.backbones.create's docstring lists "
                          "them) and set embedding_size / dropout / output / checkpointing as model.<field>") from err



class FaceModel(nn.Module):
    """Backbone + head as one module: ``model(images, labels)`` is the mean loss (what DDP wraps).

    ``embedding_grad_scale`` multiplies the gradient reaching the backbone (sharded heads: see
    ``ClassPlacement.distributed_parts``).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, embedding_grad_scale: float = 1.0) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.embedding_grad_scale = embedding_grad_scale

    def forward(self, images: torch.Tensor, labels: torch.Tensor, autocast_dtype: torch.dtype | None = None):
        with torch.autocast(images.device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            embeddings = self.backbone(images)
        if self.embedding_grad_scale != 1.0:
            from marginface.heads.sharded import scale_gradient

            embeddings = scale_gradient(embeddings, self.embedding_grad_scale)
        return self.head(embeddings, labels)  # the head computes in float32 whatever the embedding dtype


class Callback:
    """What a trainer tells the code that registered it (``Trainer(callbacks=[...])`` / :meth:`Trainer.add_callback`).

    Subclass and override the events wanted (each does nothing here), or pass any object with some of these
    methods. Called on every process, in registration order; a callback reads the trainer's public attributes and
    may write log rows with :meth:`Trainer.log`.
    """

    def before_fit(self, trainer: Trainer) -> None:
        """:meth:`Trainer.fit` starts, at ``trainer.step`` (0, or the resumed step)."""

    def after_step(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        """An optimizer step of :meth:`Trainer.fit` ended; ``step`` counts the updates made (``trainer.step``),
        ``metrics``: ``loss`` (the batch's mean over ranks) and ``lr``."""

    def after_validation(self, trainer: Trainer, step: int, results: dict[str, float]) -> None:
        """:meth:`Trainer.fit` validated the model at ``step`` (every ``validation.every`` steps and at the end):
        ``results`` maps each set to its mean 10-fold accuracy (:meth:`Trainer.validate`); each set's full result
        and embeddings are ``trainer.verification`` and ``trainer.embeddings``."""


@dataclass
class Evaluation:
    """Verification of a model on a list of sets: each set's full result and its embeddings.

    Attributes:
        results: set name -> its :class:`~marginface.evaluation.verification.VerificationResult` (10-fold
            accuracy, ROC, TAR@FAR).
        embeddings: set name -> its (2N, D) float32 embeddings (pairs interleaved).
    """

    results: dict[str, VerificationResult] = field(default_factory=dict)
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def accuracies(self) -> dict[str, float]:
        """Set name -> mean 10-fold accuracy."""
        return {name: float(r.accuracy.mean) for name, r in self.results.items()}

    @property
    def mean_accuracy(self) -> float:
        """The mean over the sets of :attr:`accuracies` (NaN without a set)."""
        return sum(self.accuracies.values()) / len(self.results) if self.results else math.nan


@dataclass(eq=False)  # tensors: no meaningful ==
class Snapshot:
    """The trainable state of a set-up trainer at a step (:meth:`Trainer.snapshot`): deep copies, on the devices
    they live on, of the backbone's and the loss's ``state_dict`` (BatchNorm statistics and loss buffers
    included), the optimizer's and the gradient scaler's state, and the step (the learning rate and the batches
    are functions of it). Not the best-so-far record, nor the data loader: both follow from the step."""

    step: int
    backbone: dict[str, torch.Tensor]
    loss: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scaler: dict[str, Any]


class Trainer:
    """Owns a run: model, loss, optimizer, data, logs and checkpoints under ``config.output_dir``."""

    def __init__(self, config: TrainConfig, allow_schedule_change: bool = False,
                 dist_info: DistInfo | None = None, dataset: Dataset | None = None,
                 callbacks: Iterable[Callback] = ()) -> None:
        """``dist_info``: train as this process group member instead of joining torchrun's (the AM-LFS search
        gives each rank a trainer of its own, ``DistInfo()``, while it uses the group for its rewards).
        ``dataset``: train on this dataset instead of building one from ``config.data`` (e.g. a cached view of
        it); it must have ``num_classes`` and hold what ``config.data`` describes, since a resume checks the run's
        identity and image counts against it. ``callbacks``: see :class:`Callback`."""
        self.config = config
        self.allow_schedule_change = allow_schedule_change  # resume checks: see training/run_checks.py
        self._dist_info = dist_info
        self._dataset = dataset
        self.callbacks: list[Callback] = list(callbacks)
        self.resumed_from: Path | None = None
        self.step = 0
        self.best: dict[str, Any] = {}
        self._last_validation: dict[str, float] = {}
        self._logger: _RunLogger | None = None

    def add_callback(self, callback: Callback) -> Trainer:
        """Register ``callback`` (after the ones already registered); returns the trainer."""
        self.callbacks.append(callback)
        return self

    def _notify(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            method = getattr(callback, event, None)
            if method is not None:
                method(self, *args)

    # ------------------------------------------------------------------ setup
    def setup(self) -> Trainer:
        cfg = self.config
        self.device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if cfg.device == "auto" else cfg.device))
        self.dist = self._dist_info or init_from_env(self.device.type)
        self.run_dir = Path(cfg.output_dir)
        self._seed_everything(cfg.seed)
        self.dataset = self._dataset if self._dataset is not None else build_dataset(cfg.data)
        self.config = cfg = resolve_epochs(cfg, len(self.dataset))  # epochs -> steps, now that N is known
        self.facts = {"world_size": self.dist.world_size, "identities": self.dataset.num_classes,
                      "images": len(self.dataset)}
        saved = SavedStep.newest(self.run_dir)  # what a resume continues (training/reshard.py); None: a new run
        self.config_changes = check_resume(self.run_dir, config_to_dict(cfg), self.facts, self.allow_schedule_change,
                                           has_checkpoint=saved is not None)
        self.backbone = create_backbone(cfg)
        self.placement = placement = ClassPlacement.for_run(cfg, self.dist, self.dataset.num_classes)
        if finetune.uses_triplet(cfg):  # triplet alone, or margin softmax + lambda * triplet (training/finetune.py)
            self.loss, head = finetune.triplet_objective(cfg, self.dist, placement)
        else:
            self.loss = placement.build_loss(cfg)
            head = placement.build_head(cfg, self.loss, self.dist)
        if cfg.model.init_from:  # fine-tuning: a trained model's backbone (and loss state); a resume overrides it
            line = finetune.init_from_model(cfg, self.backbone, self.loss)
            if self.dist.is_main:
                print(line)
        self.model = FaceModel(self.backbone, head).to(self.device)
        if cfg.model.init_centres == "class_means" and saved is None:  # a resume has its own centres
            line = finetune.init_centres_from_class_means(cfg, self.backbone, self.loss, self.dataset, self.device)
            if self.dist.is_main:
                print(line)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ddp_module, self.train_model = placement.distributed_parts(self.model, self._wrap_ddp)
        self.optimizer = self._build_optimizer()
        if cfg.loss.fused_update:
            placement.check_fused_update(self.dist)
            self.model.head.fuse_optimizer(self.optimizer)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.theta_recorder = self._attach_theta_recorder()  # analysis.theta_every: a hook on the head's input
        self._resume(saved)
        self.validation_sets = self._build_validation_sets()
        if self.dist.is_main:
            record_start(self.run_dir, config_to_dict(cfg), self.step, self.facts, self.config_changes)
            print(banner(cfg, self.dataset.num_classes, len(self.dataset), self.device.type, self.dist.world_size,
                         self.step, self.resumed_from, self.config_changes), flush=True)
        return self

    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        if self.config.deterministic:
            torch.use_deterministic_algorithms(True)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    def _attach_theta_recorder(self) -> ThetaRecorder | None:
        """``analysis.theta_every`` > 0: a recorder on the head's input whose statistics a callback logs after each
        step; None otherwise."""
        every = self.config.analysis.theta_every
        if not every:
            return None
        if self.placement.sharded:
            raise ValueError("analysis.theta_every needs every class centre in one process; it does not support "
                             "loss.sharded=true (set analysis.theta_every=0)")
        recorder = ThetaRecorder(self.loss, every, lambda: self.step)
        recorder.attach(self.model.head)
        self.add_callback(_LogTheta(recorder))
        return recorder

    def _wrap_ddp(self, model: nn.Module) -> nn.Module:
        if not self.dist.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.dist.local_rank] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        from marginface.training.optim import build_optimizer

        return build_optimizer(self.model, self.config.optim)

    def _resume(self, saved: SavedStep | None) -> None:
        """Continue from ``saved``, the newest step all shards of which were saved — under any placement of the
        classes: ``training/reshard.py`` re-cuts the centres, their optimizer state and the samplers for this
        process."""
        self._check_same_step(saved)
        if saved is None:
            return
        placement = self.placement
        state = load_for_process(saved, placement.shards, placement.shard, placement.num_classes, self.backbone,
                                 self.loss, self.model.head, self.optimizer, self._per_class_optimizer_ids())
        self.step = int(state["step"])
        self.best = state.get("best", {})
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.resumed_from = saved.folders[min(placement.shard, saved.shards - 1)]
        if saved.shards != placement.shards and self.dist.is_main:
            print(f"resharded step {saved.step}: class centres saved as {saved.shards} shard(s), now "
                  f"{placement.shards}")

    def _check_same_step(self, saved: SavedStep | None) -> None:
        """Every process must resume the same step (rank folders on one shared filesystem)."""
        if not self.dist.enabled:
            return
        import torch.distributed as dist

        step = torch.tensor([-1 if saved is None else saved.step], dtype=torch.int64)
        low, high = step.clone(), step.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if int(low) != int(high):
            raise ValueError(f"the processes see different checkpoints in {self.run_dir} (newest complete steps "
                             f"{int(low)} .. {int(high)}): every rank must see the same run folder")

    def _per_class_optimizer_ids(self) -> dict[str, int]:
        """The optimizer's ids (``optimizer.state_dict()`` numbering) of the loss's per-class parameters."""
        from marginface.training.placement import per_class_names

        ids = {id(p): i for i, p in enumerate(p for g in self.optimizer.param_groups for p in g["params"])}
        params = dict(self.loss.named_parameters())
        rows = getattr(self.loss, "num_classes", None)
        return {f"loss.{name}": ids[id(params[name])] for name in per_class_names(params, rows)
                if id(params[name]) in ids} if rows else {}

    def _build_validation_sets(self) -> list[tuple[str, torch.Tensor, np.ndarray]]:
        cfg, sets = self.config, []
        if cfg.validation.synthetic_pairs:
            from marginface.data.synthetic import synthetic_splits

            _, images, issame = synthetic_splits(
                cfg.data.synthetic_identities, cfg.validation.synthetic_identities,
                cfg.data.synthetic_images_per_identity, cfg.validation.synthetic_pairs, cfg.data.synthetic_seed)
            sets.append(("synthetic_heldout", images, issame))
        for path in cfg.validation.bins:
            from marginface.data.bins import load_verification_bin
            from marginface.evaluation.verification import resolve_folds

            images, issame = load_verification_bin(path)
            _, note = resolve_folds(issame, None, Path(path).stem)  # a one-class set fails now, not at validation
            if note and self.dist.is_main:
                print(f"validation set {path}: {note}")
            sets.append((Path(path).stem, images, issame))
        return sets

    # ------------------------------------------------------------------ the loop
    def data_loader(self) -> DataLoader:
        cfg = self.config
        if cfg.data.sampler == "pk":  # P identities x K images per batch (training/pk_sampler.py)
            sampler = pk_batch_sampler(self.dataset, cfg, self.step, self.dist)
        else:
            sampler = StepBatchSampler(len(self.dataset), cfg.batch_size, cfg.seed, self.step, cfg.steps,
                                       self.dist.rank, self.dist.world_size, flip=cfg.data.flip)
        # the loader's own generator: iter(loader) draws the workers' base seed from it, not from torch's global
        # RNG, so a resumed run (whose global RNG is the checkpoint's) draws exactly what the straight run draws
        return DataLoader(FlipByIndex(self.dataset), batch_sampler=sampler, num_workers=cfg.data.num_workers,
                          pin_memory=self.device.type == "cuda", persistent_workers=False,
                          worker_init_fn=ignore_stop_signals if cfg.data.num_workers else None,
                          generator=torch.Generator().manual_seed(cfg.seed))

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """One optimizer step on a batch; returns the batch's mean loss (over all ranks)."""
        cfg = self.config
        images = images.to(self.device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(self.device, non_blocking=True)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, cfg.optim, cfg.steps)
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
        self.optimizer.zero_grad(set_to_none=True)
        total, micro = 0.0, cfg.grad_accum_steps
        for i, (im, lb) in enumerate(zip(images.chunk(micro), labels.chunk(micro))):
            last = i == micro - 1
            sync = nullcontext() if last or not self.dist.enabled else self.ddp_module.no_sync()
            with sync:
                loss = self.train_model(im, lb, amp)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {float(loss)} at step {self.step}: lower optim.lr or use "
                                             "bf16/fp32")
                self.scaler.scale(loss / micro).backward()
            total += float(loss.detach()) / micro
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.backbone.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return mean_across_ranks(total, self.dist, self.device)

    def run_steps(self, steps: int, start: int | None = None) -> float:
        """Train ``steps`` optimizer steps from global step ``start`` (default: ``self.step``), in training mode
        (``model.freeze_bn`` holds), without logs, validation or checkpoints; returns the mean of their losses.

        The learning rate and the batches are functions of the step, so a copy restored to a snapshot and run from
        its step trains exactly as the original would (what the AM-LFS search relies on)."""
        if steps < 1:
            raise ValueError(f"run_steps trains at least one step, got steps={steps}")
        if start is not None:
            self.step = start
        finetune.set_train_mode(self.model, self.config.model.freeze_bn)
        total, done = 0.0, 0
        for images, labels in self.data_loader():
            total += self.train_step(images, labels)
            done += 1
            if done == steps:
                break
        return total / max(done, 1)

    def snapshot(self) -> Snapshot:
        """Deep copies of the trainable state now (:class:`Snapshot`); :meth:`restore` returns to it."""
        import copy

        return Snapshot(self.step, copy.deepcopy(self.backbone.state_dict()), copy.deepcopy(self.loss.state_dict()),
                        copy.deepcopy(self.optimizer.state_dict()), copy.deepcopy(self.scaler.state_dict()))

    def restore(self, snapshot: Snapshot) -> None:
        """Load a :meth:`snapshot` (of this trainer or of one set up from the same config) into the model, the
        optimizer and the scaler, and return to its step; the snapshot stays usable for another restore."""
        import copy

        self.backbone.load_state_dict(snapshot.backbone)
        self.loss.load_state_dict(snapshot.loss)
        self.optimizer.load_state_dict(copy.deepcopy(snapshot.optimizer))  # load_state_dict keeps references
        if snapshot.scaler:
            self.scaler.load_state_dict(snapshot.scaler)
        self.step = snapshot.step

    def log(self, step: int, values: dict[str, float]) -> None:
        """Append ``values`` at ``step`` to the run's logs (log.csv, TensorBoard); only while :meth:`fit` runs
        (the logs are opened there), and written by the main process only."""
        if self._logger is None:
            raise RuntimeError("Trainer.log writes into the logs that fit() opens: call it from a callback")
        self._logger.log(step, values)

    def fit(self) -> dict[str, Any]:
        """Train to ``config.steps``; returns the final validation results (and the best seen).

        SIGINT / SIGTERM stop after the current step with a checkpoint of it (``TrainingInterrupted``)."""
        with StopRequest() as stop:
            try:
                return self._fit(stop)
            finally:  # an error ends the progress bar's line first, so its message starts a line of its own
                if getattr(self, "_bar", None) is not None:
                    self._bar.close()

    def _fit(self, stop: StopRequest) -> dict[str, Any]:
        from tqdm.auto import tqdm

        cfg = self.config
        logger = self._logger = _RunLogger(self.run_dir, self.dist.is_main, resumed_at=self.step)
        bar = self._bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.dist.is_main, desc="train",
                               unit="step")
        finetune.set_train_mode(self.model, cfg.model.freeze_bn)
        self._notify("before_fit")
        tick, seen = time.perf_counter(), 0
        saved = None
        for images, labels in self.data_loader():
            loss_value = self.train_step(images, labels)
            lr = self.optimizer.param_groups[0]["lr"]
            self._notify("after_step", self.step, {"loss": loss_value, "lr": lr})  # e.g. the theta statistics
            seen += images.shape[0] * self.dist.world_size
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                rate = seen / max(time.perf_counter() - tick, 1e-9)
                logger.log(self.step, {"loss": loss_value, "lr": lr, "img_per_s": rate,
                                        **finetune.loss_stats(self.model.head)})
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}")
                tick, seen = time.perf_counter(), 0
            bar.update(1)
            paused = time.perf_counter()
            if cfg.validation.every and self.step % cfg.validation.every == 0:
                self._validate_and_keep_best(logger)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                saved = (self.step, self.save())
            if stop.requested(self.dist, self.device):
                folder = saved[1] if saved and saved[0] == self.step else self.save()
                bar.close()
                self._close_logs()
                raise stop.interrupted(self.step, str(folder))
            tick += time.perf_counter() - paused  # img/s and the ETA count training steps only
            exclude_pause(bar, time.perf_counter() - paused)
        bar.close()
        if cfg.steps == 0 and saved is None:  # no training (the "as is" arm): the starting model is step 0
            self.save()
        validated_last_step = cfg.validation.every and self.step % cfg.validation.every == 0
        fresh = validated_last_step and self._last_validation  # the loop just validated this very step
        results = self._last_validation if fresh else self._validate_and_keep_best(logger)
        self._close_logs()
        return {"final": results, "best": self.best}

    def _close_logs(self) -> None:
        if self._logger is not None:
            self._logger.close()
            self._logger = None

    # ------------------------------------------------------------------ validation and checkpoints
    def evaluate(self, sets: list[tuple[str, torch.Tensor, np.ndarray]] | None = None,
                 flip: bool = True) -> Evaluation:
        """Verify the current backbone on ``sets`` — ``(name, images (2N, 3, 112, 112) in [-1, 1], issame (N,))``
        triples, default the run's validation sets — in eval mode, ``validation.batch_size`` images per forward,
        with flip test-time augmentation unless ``flip`` is False; then back to training mode (``model.freeze_bn``
        holds). The one validation loop: :meth:`validate`, the AM-LFS search's rewards and the demo use it."""
        from marginface.evaluation.embed import embed_tensor
        from marginface.evaluation.verification import evaluate_interleaved

        out = Evaluation()
        for name, images, issame in self.validation_sets if sets is None else sets:
            emb = embed_tensor(self.backbone, images, batch_size=self.config.validation.batch_size,
                               flip=flip, device=self.device)
            out.embeddings[name] = emb
            out.results[name] = evaluate_interleaved(emb, issame, name=name)
        finetune.set_train_mode(self.model, self.config.model.freeze_bn)
        return out

    def validate(self) -> dict[str, float]:
        """Mean 10-fold accuracy on every validation set (flip TTA), in eval mode: :meth:`evaluate`'s accuracies.

        Also kept: ``self.verification`` (each set's full result: ROC, TAR@FAR) and ``self.embeddings`` (each
        set's (2N, D) embeddings), from which ``best.safetensors``'s card gets its calibrated threshold.
        """
        evaluation = self.evaluate()
        self.verification, self.embeddings = evaluation.results, evaluation.embeddings
        return evaluation.accuracies

    def _validate_and_keep_best(self, logger: _RunLogger) -> dict[str, float]:
        if not self.validation_sets:
            return {}
        results = self.validate()
        self._last_validation = results
        mean = float(np.mean(list(results.values())))
        logger.log(self.step, {f"val_{k}": v for k, v in results.items()})
        is_best = mean > self.best.get("mean_accuracy", -math.inf)
        if self.dist.is_main and is_best:
            self.best = {"step": self.step, "mean_accuracy": mean, **results}
            self._write_best()
        if self.dist.is_main:
            from tqdm.auto import tqdm

            tqdm.write(validation_line(self.step, results, is_best))
        self._notify("after_validation", self.step, results)
        return results

    def _write_best(self) -> None:
        from safetensors.torch import save_file

        run = RunDir(self.run_dir)
        # Sharded centres are spread over the ranks' checkpoints; best.safetensors then holds the backbone only.
        tensors = ckpt.model_tensors(self.backbone, self.placement.loss_for_best(self.loss))
        card = self._card(self.best, self._validation_thresholds())
        atomic_write(run.best, lambda tmp: save_file(tensors, str(tmp), metadata=card))
        atomic_write_text(run.best_scores, json.dumps(self.best, indent=2))

    def _card(self, validation: dict[str, Any], thresholds: dict[str, Any] | None = None) -> dict[str, str]:
        """The model card (safetensors metadata) of the current backbone weights."""
        from marginface.models.card import training_card

        state = {k: v.detach().cpu().contiguous() for k, v in self.backbone.state_dict().items()}
        card = training_card(self.config, self.dataset.num_classes, len(self.dataset), validation, state)
        card.thresholds = thresholds or {}
        return card.metadata()

    def _validation_thresholds(self) -> dict[str, Any]:
        """The card's threshold, calibrated on the first validation set's pairs as just embedded, at the smallest
        FAR they can measure (``evaluation/calibration.py``); ``{}`` without a usable validation set."""
        from marginface.evaluation.calibration import calibrate_validation_pairs

        if not self.validation_sets or not getattr(self, "embeddings", None):
            return {}
        name, _, issame = self.validation_sets[0]
        return calibrate_validation_pairs(self.embeddings[name], issame, f"validation set {name} at step {self.step}")

    def save(self) -> Path | None:
        """Checkpoint (rank 0; with sharded centres every rank writes its own shard, see ``ClassPlacement``).
        Returns the checkpoint folder this process wrote (None on a rank that writes none)."""
        from marginface.training.placement import head_state

        if not self.placement.writes_checkpoints(self.dist):
            barrier(self.dist)
            return None
        extra: dict[str, Any] = {"best": self.best, "scaler": self.scaler.state_dict() if self.scaler.is_enabled()
                                 else None,
                                 "classes": {**self.placement.layout(),
                                             "optimizer_ids": self._per_class_optimizer_ids()}}
        head = {f"head.{k}": v.detach().cpu().contiguous() for k, v in head_state(self.model.head).items()}
        folder = ckpt.save_checkpoint(self.placement.checkpoint_root(self.run_dir), self.step, self.backbone,
                                      self.loss, self.optimizer, extra, metadata=self._card(self._last_validation),
                                      training_tensors=head)
        barrier(self.dist)
        return folder


class _LogTheta(Callback):
    """``analysis.theta_every``: writes the recorder's statistics of the step just trained into the run's logs."""

    def __init__(self, recorder: ThetaRecorder) -> None:
        self.recorder = recorder

    def after_step(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if recorded := self.recorder.pop():
            trainer.log(*recorded)


class _RunLogger:
    """CSV (always) and TensorBoard (when installed) logs of a run, written by the main process only.

    A run resumed at step N (``resumed_at``) first drops what a killed run logged after its step-N checkpoint —
    the CSV rows past N (rewritten atomically) and, through ``purge_step``, TensorBoard's events past N — so
    that every log holds exactly one row per step, as the uninterrupted run's.
    """

    def __init__(self, run_dir: Path, enabled: bool, resumed_at: int = 0) -> None:
        self.enabled, self.path, self.tb = enabled, RunDir(run_dir).log, None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if resumed_at and self.path.exists():
            truncate_log(self.path, resumed_at)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(RunDir(run_dir).tensorboard),
                                    purge_step=resumed_at + 1 if resumed_at else None)
        except ImportError:  # the logging extra is optional
            self.tb = None

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        append_log(self.path, step, values)
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# moved to marginface.runs.log (the log's schema lives with the run folder); kept for one release
_truncate_log = truncate_log


def plot_loss_curve(run_dir: str | Path) -> Path | None:
    """``loss_curve.png`` in the run folder (None when matplotlib is not installed, or nothing was
    logged: a steps=0 run).

    The training loss on the left axis; the validation accuracies (if any) on the right one, on a fixed
    0.5-1 range (chance to perfect verification: a lone point then sits where its value is, not in the middle
    of an axis stretched around it), each point labelled with its value. One legend above the axes, where it
    cannot cover a point.
    """
    from marginface.plotting import pyplot

    run = RunDir(run_dir)
    if not run.log.is_file():
        return None
    try:
        plt = pyplot()
    except ImportError:  # the plot extra is optional here: no figure
        return None
    series = read_log(run.path)
    fig, ax = plt.subplots(figsize=(6, 4))
    steps, values = zip(*series["loss"])
    ax.plot(steps, values, color="C0", label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    val_keys = [k for k in series if k.startswith("val_")]
    if val_keys:
        twin = ax.twinx()
        lowest = min(v for key in val_keys for _, v in series[key])
        for colour, key in enumerate(val_keys, start=1):
            s, v = zip(*series[key])
            twin.plot(s, v, "o--", color=f"C{colour}", label=f"validation accuracy ({key.removeprefix('val_')})")
            for x, y in list(zip(s, v))[-10:]:  # the last ten values, as text beside their points
                twin.annotate(f"{y:.1%}", (x, y), textcoords="offset points", xytext=(-4, 6), ha="right",
                              fontsize=8, color=f"C{colour}")
        twin.set_ylim(min(0.5, lowest - 0.02), 1.0)
        twin.set_ylabel("verification accuracy")
    handles = [h for axis in fig.axes for h in axis.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 2), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.92))  # the top 8% holds the legend
    out = run.loss_curve
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def train(config: TrainConfig, allow_schedule_change: bool = False) -> dict[str, Any]:
    """Train (or resume) one run as ``marginface train`` does: set up, fit, leave the process group (at once on
    an error, so the other ranks do not wait), and on the main process draw the loss curve and print the final and
    best validation. Returns ``Trainer.fit``'s results."""
    from marginface.training.distributed import shutdown

    trainer = Trainer(config, allow_schedule_change=allow_schedule_change).setup()
    try:
        results = trainer.fit()
    except BaseException:
        shutdown(wait_for_peers=False)
        raise
    shutdown()
    if trainer.dist.is_main:
        plot_loss_curve(config.output_dir)
        print(f"final validation: {results['final']}  best: {results['best']}")
    return results


def clear_run(run_dir: str | Path) -> None:
    """Delete a run folder (used by ``--fresh``)."""
    shutil.rmtree(run_dir, ignore_errors=True)
