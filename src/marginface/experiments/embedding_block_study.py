"""Issue 30's CPU variant of the fine-tuning study: only the embedding block of the strong model trains.

The whole-network study (``configs/study/celeba299_ms1m_finetune.yaml``) needs ~9-10 hours of two CPU cores. Here the
trunk of the starting MobileFaceNet (``conv1``, ``conv2_dw``, ``blocks``: everything before ``conv_sep``) is frozen,
so its output — the input of ``conv_sep``, ``(128, 7, 7)`` float32 per image — is computed once per distinct image
and cached; every run then trains the embedding block (``conv_sep`` + ``head``) and the class centres on the cached
features in seconds. Everything else is the trainer's: the config (preset + the arm's overrides), the starting
model (:func:`marginface.training.finetune.init_from_model`), the objective (``losses.create`` / the heads / the
triplet head), the class-mean centres (:func:`~marginface.training.finetune.class_mean_centres`), the P x K batches
with their flips (:class:`~marginface.training.pk_sampler.PKBatchSampler`), SGD and its step schedule
(``training/optim.py``, ``training/schedules.py``), frozen BatchNorm; and the evaluation is the library's
(``embed_batches`` with flip off, ``evaluate_interleaved``: what ``marginface eval --no-flip`` computes on a
``.bin``). ``results.csv`` has the study runner's columns, so ``marginface study --summary --compare`` reads it.

On disk, under the study's output folder::

    features/<set>.npy, <set>.json   trunk features (M distinct images, V views, 128, 7, 7) and what made them
                                     (the model file's SHA-256, the images' digests, extraction seconds); resumable
    runs/<arm>_s<seed>.safetensors   each trained run's final embedding block and loss tensors (re-evaluation)
    logs/<arm>_s<seed>.json          its training losses and times
    results.csv                      one row per evaluated run (``experiments/study.py``'s columns)
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from marginface.experiments import study
from marginface.training import environment
from marginface.training.config import TrainConfig

#: the modules of the frozen trunk, in forward order (our MobileFaceNet's names)
TRUNK_MODULES = ("conv1", "conv2_dw", "blocks")
#: the modules that train: the 1x1 convolution to 512 and the embedding head (GDC, linear, BN)
BLOCK_MODULES = ("conv_sep", "head")
#: images per trunk forward while extracting features
EXTRACT_BATCH = 32


# ------------------------------------------------------------------------------------------ the model, split
class Trunk(nn.Module):
    """``(B, 3, 112, 112)`` faces in [-1, 1] -> ``(B, C, 7, 7)``: the frozen part of a MobileFaceNet (its modules,
    shared, not copied)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.conv1, self.conv2_dw, self.blocks = (getattr(backbone, m) for m in TRUNK_MODULES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2_dw(self.conv1(x))
        for block in self.blocks:
            x = block(x)
        return x


class EmbeddingBlock(nn.Module):
    """``(B, C, 7, 7)`` trunk features -> ``(B, D)`` embeddings (not normalised): ``head(conv_sep(x))``."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.conv_sep, self.head = (getattr(backbone, m) for m in BLOCK_MODULES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv_sep(x))


def split_backbone(backbone: nn.Module) -> tuple[Trunk, EmbeddingBlock]:
    """``(trunk, block)`` with ``block(trunk(x)) == backbone(x)``; the two share ``backbone``'s modules.

    Raises ValueError for a backbone without these modules (only our ``mobilefacenet`` has them)."""
    missing = [m for m in (*TRUNK_MODULES, *BLOCK_MODULES) if not isinstance(getattr(backbone, m, None), nn.Module)]
    if missing:
        raise ValueError(f"the embedding-block study splits a MobileFaceNet before its conv_sep, but "
                         f"{type(backbone).__name__} has no {', '.join(missing)}: use model.backbone=mobilefacenet")
    trunk, block = Trunk(backbone), EmbeddingBlock(backbone)
    return trunk.train(backbone.training), block.train(backbone.training)


def model_files(path: str | Path) -> list[Path]:
    """The file(s) holding the weights of ``model.init_from`` (an MXNet prefix: its params and symbol)."""
    from marginface.models.mxnet_format import mxnet_files
    from marginface.runs.layout import model_file

    path = Path(path)
    if model_file(path).is_file():
        return [model_file(path)]
    files = mxnet_files(path)
    if files is None:
        raise FileNotFoundError(f"model.init_from {path}: no such model file or MXNet prefix")
    return list(files)


def fingerprint(paths: list[Path]) -> str:
    """SHA-256 over the files' contents (in order): what a feature cache records of the model that made it."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def load_starting_model(config: TrainConfig) -> nn.Module:
    """The backbone the trainer would start from: ``model.*`` built as the trainer builds it, then
    :func:`~marginface.training.finetune.init_from_model` (card checked, input normalisation folded); eval mode."""
    from marginface.training.finetune import init_from_model
    from marginface.training.trainer import create_backbone

    if not config.model.init_from:
        raise ValueError("the embedding-block study fine-tunes a trained model: set model.init_from")
    if config.model.init_loss:
        raise ValueError("model.init_loss is not supported by the embedding-block study (its centres are new)")
    with torch.random.fork_rng(devices=[]):
        backbone = create_backbone(config)
    init_from_model(config, backbone, nn.Module())  # the loss argument is read only with model.init_loss
    return backbone.eval()


# ------------------------------------------------------------------------------------------ the feature cache
@dataclass
class Features:
    """Cached trunk features of one set.

    Attributes:
        values: ``(M, V, C, 7, 7)`` float32, one row per distinct image; view 0 the image, view 1 (training sets)
            its mirror image.
        rows: ``(N,)`` the distinct row of every sample (a training image, or a ``.bin``'s stored image).
        labels: ``(N,)`` int64 identity labels (training) or ``(N // 2,)`` bool ``issame`` (a ``.bin``).
        seconds: wall seconds the extraction took (summed over resumed attempts).
        num_classes: identities of a training set (0 for a ``.bin``).
    """

    values: np.ndarray
    rows: np.ndarray
    labels: np.ndarray
    seconds: float
    num_classes: int = 0


def _distinct(encoded: list[bytes]) -> tuple[list[int], np.ndarray, list[str]]:
    """``(first index of each distinct item, (N,) row of every item, sha256 of each distinct item)``."""
    row_of: dict[bytes, int] = {}
    first, rows, digests = [], [], []
    for i, data in enumerate(encoded):
        if data not in row_of:
            row_of[data] = len(first)
            first.append(i)
            digests.append(hashlib.sha256(data).hexdigest())
        rows.append(row_of[data])
    return first, np.asarray(rows, dtype=np.int64), digests


@torch.inference_mode()
def extract(trunk: nn.Module, decode: Any, count: int, views: int, cache: Path, meta: dict[str, Any],
            desc: str) -> tuple[np.ndarray, float]:
    """Trunk features of ``count`` images into ``cache`` (``.npy``, shape ``(count, views, C, 7, 7)``) beside
    ``cache.json`` (``meta`` + progress); resumes a partial cache with the same ``meta``. Returns the array (read
    into memory) and the extraction seconds.

    ``decode(start, stop)`` returns images ``start .. stop - 1`` as ``(n, 3, 112, 112)`` in [-1, 1]; view 1 is
    ``torch.flip(image, dims=[-1])``, exactly what the trainer's ``FlipByIndex`` feeds. Raises ValueError for a
    cache made by another model or from other images (its error names the file to delete).
    """
    from tqdm.auto import tqdm

    info_path = cache.with_suffix(".json")
    info = json.loads(info_path.read_text()) if info_path.is_file() else None
    if info is not None and info.get("meta") != meta:
        changed = sorted(k for k in meta if info.get("meta", {}).get(k) != meta[k])
        raise ValueError(f"feature cache {cache} was made with other {', '.join(changed) or 'settings'} (e.g. another "
                         f"model file or other images); delete {cache} and {info_path}, or use another output folder")
    trunk.eval()
    if info is None or not cache.is_file():
        shape = (count, views, *trunk(decode(0, 1)).shape[1:])
        np.lib.format.open_memmap(cache, mode="w+", dtype=np.float32, shape=shape).flush()
        info = {"meta": meta, "shape": list(shape), "done": 0, "seconds": 0.0}
        _write_json(info_path, info)
    values = np.load(cache, mmap_mode="r+")
    done = int(info["done"])
    bar = tqdm(total=count, initial=done, desc=desc, unit="img")
    while done < count:
        start = time.perf_counter()
        stop = min(count, done + EXTRACT_BATCH)
        images = decode(done, stop)
        values[done:stop, 0] = trunk(images).numpy()
        if views == 2:
            values[done:stop, 1] = trunk(torch.flip(images, dims=[-1])).numpy()
        values.flush()
        info["done"], info["seconds"] = stop, info["seconds"] + time.perf_counter() - start
        _write_json(info_path, info)  # after the flush: a crash never marks unwritten rows as done
        bar.update(stop - done)
        done = stop
    bar.close()
    return np.array(values), float(info["seconds"])


def bin_features(path: str | Path, trunk: nn.Module, cache_dir: Path, model_hash: str) -> Features:
    """Trunk features of a ``.bin`` set's distinct stored images, decoded as ``marginface eval`` decodes them."""
    from marginface.data.bins import decode_verification_images, read_verification_bin

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"eval set {path} does not exist: prepare it first (docs/results.md, 'The one "
                                "command'), or leave it out of the spec's eval bins")
    encoded, issame = read_verification_bin(path)
    first, rows, digests = _distinct(list(encoded))
    meta = {"model_sha256": model_hash, "images_sha256": _digest_of(digests), "views": 1}

    def decode(start: int, stop: int) -> torch.Tensor:
        return decode_verification_images(encoded, path, first[start:stop], progress=False)

    values, seconds = extract(trunk, decode, len(first), 1, cache_dir / f"{path.stem}.npy", meta, path.stem)
    return Features(values, rows, np.asarray(issame, dtype=bool), seconds)


def train_features(config: TrainConfig, trunk: nn.Module, cache_dir: Path, model_hash: str) -> Features:
    """Trunk features of the training images (``data.*`` as the trainer reads it) and of their mirror images."""
    from marginface.training.data import build_dataset
    from marginface.training.pk_sampler import dataset_labels

    dataset = build_dataset(config.data)
    encoded = [dataset.read_bytes(i)[0] for i in range(len(dataset))]
    first, rows, digests = _distinct(encoded)
    meta = {"model_sha256": model_hash, "images_sha256": _digest_of(digests), "views": 2}

    def decode(start: int, stop: int) -> torch.Tensor:
        return torch.stack([dataset[first[i]][0] for i in range(start, stop)])

    values, seconds = extract(trunk, decode, len(first), 2, cache_dir / "train.npy", meta, "train images")
    return Features(values, rows, dataset_labels(dataset), seconds, dataset.num_classes)


def _digest_of(digests: list[str]) -> str:
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def _write_json(path: Path, value: dict) -> None:
    from marginface.files import atomic_write_text

    atomic_write_text(path, json.dumps(value, indent=1))


# ------------------------------------------------------------------------------------------ one run
class _ClassFeatures(torch.utils.data.Dataset):
    """The unflipped cached features of every training image with its label: what ``class_mean_centres`` reads."""

    def __init__(self, train: Features, num_classes: int) -> None:
        self.train, self.num_classes = train, num_classes

    def __len__(self) -> int:
        return len(self.train.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.train.values[self.train.rows[i], 0]), int(self.train.labels[i])


def build_objective(config: TrainConfig, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """``(loss, head)`` as the trainer builds them (after seeding torch with the run's seed, as it does)."""
    from marginface.training import finetune
    from marginface.training.distributed import DistInfo
    from marginface.training.placement import ClassPlacement

    torch.manual_seed(config.seed)
    placement = ClassPlacement.for_run(config, DistInfo(), num_classes)
    if finetune.uses_triplet(config):
        return finetune.triplet_objective(config, DistInfo(), placement)
    loss = placement.build_loss(config)
    return loss, placement.build_head(config, loss, DistInfo())


def train_block(config: TrainConfig, block: nn.Module, train: Features | None, num_classes: int
                ) -> tuple[nn.Module, list[float]]:
    """Fine-tune ``block`` (in place) for ``config.steps`` steps on ``train``'s cached features; returns the loss
    module (its centres) and the loss of every step. A pure function of the config (seed included) and inputs.

    Raises FloatingPointError on a non-finite loss (as the trainer does)."""
    from marginface.training import finetune
    from marginface.training.optim import build_optimizer
    from marginface.training.pk_sampler import PKBatchSampler
    from marginface.training.schedules import learning_rate
    from marginface.training.trainer import FaceModel

    if config.steps == 0:  # the "as is" arm: nothing trains, there are no centres
        return nn.Module(), []
    if train is None:
        raise ValueError("training needs the training features")
    loss, head = build_objective(config, num_classes)
    if config.model.init_centres == "class_means":  # in this process: the cached features are in memory
        in_process = replace(config, data=replace(config.data, num_workers=0))
        finetune.init_centres_from_class_means(in_process, block, loss, _ClassFeatures(train, num_classes), "cpu")
    model = FaceModel(block, head)
    optimizer = build_optimizer(model, config.optim)
    k = config.data.pk_images_per_identity
    sampler = PKBatchSampler(train.labels, config.batch_size // k, k, config.seed, 0, config.steps,
                             flip=config.data.flip, small_identities=config.data.pk_small_identities)
    finetune.set_train_mode(model, config.model.freeze_bn)
    values, losses = torch.from_numpy(train.values), []
    for step in range(config.steps):
        indices, flips = sampler.global_batch(step)
        features = values[torch.from_numpy(train.rows[indices]), torch.from_numpy(flips.astype(np.int64))]
        labels = torch.from_numpy(train.labels[indices])
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config.optim, config.steps)
        optimizer.zero_grad(set_to_none=True)
        value = model(features, labels)
        if not torch.isfinite(value):
            raise FloatingPointError(f"loss is {float(value)} at step {step}")
        value.backward()
        optimizer.step()
        losses.append(float(value.detach()))
    block.eval()
    return loss, losses


def evaluate(block: nn.Module, sets: dict[str, Features], far: float) -> list[Any]:
    """Verification results of ``block`` on each cached ``.bin`` set, flip off: ``embed_batches`` (L2-normalised
    embeddings) of the distinct images, then ``evaluate_interleaved`` on the stored pairs — ``evaluate_bins``'s
    computation with the trunk's output read from the cache."""
    from marginface.evaluation import metrics
    from marginface.evaluation.embed import embed_batches
    from marginface.evaluation.verification import evaluate_interleaved

    if far not in metrics.DEFAULT_FARS:
        raise ValueError(f"eval far {far:g} is not among the reported FARs {metrics.DEFAULT_FARS}")
    results = []
    for name, feats in sets.items():
        values = torch.from_numpy(feats.values[:, 0])
        batches = (values[i:i + 256] for i in range(0, len(values), 256))
        embeddings = embed_batches(block, batches, flip=False, total=len(values), desc=f"eval {name}")
        results.append(evaluate_interleaved(embeddings[feats.rows], feats.labels, None, name))
    return results


def result_row(arm: str, seed: int, steps: int, train_wall: float, eval_wall: float, results: list[Any],
               far: float) -> dict[str, Any]:
    """A results.csv row in the study runner's format (``Study._row``): 6-decimal fractions, whole seconds."""
    row: dict[str, Any] = {"arm": arm, "seed": seed, "steps": steps, "train_wall_s": f"{train_wall:.0f}",
                           "eval_wall_s": f"{eval_wall:.0f}"}
    for r in results:
        tar = dict(zip(r.tar_at_far.far, r.tar_at_far.tar)).get(far)
        row |= {f"{r.name}_acc": f"{r.accuracy.mean:.6f}", f"{r.name}_acc_std": f"{r.accuracy.std:.6f}",
                f"{r.name}_tar": "" if tar is None or not np.isfinite(tar) else f"{tar:.6f}"}
    return row


# ------------------------------------------------------------------------------------------ the study
def arm_config(spec: study.StudySpec, arm: str, seed: int) -> TrainConfig:
    """The config ``marginface train`` would run for (arm, seed) of ``spec``."""
    from marginface.training.config import load_config
    from marginface.training.presets import resolve_config

    return load_config(resolve_config(spec.preset), [*spec.overrides, *spec.arms[arm], f"seed={seed}"])


def run_study(spec: study.StudySpec, out: str | Path, threads: int | None = None) -> list[tuple[str, int, str]]:
    """Run (or resume) every (arm, seed) of ``spec`` into ``out``; returns the failed runs ``(arm, seed, why)``.

    The runs go one after another in this process (``spec.lanes`` is not used). A row missing a set of
    ``spec``'s eval bins is evaluated on that set from the run's saved weights (adding a test set later trains
    nothing again; its ``eval_wall_s`` then sums both evaluations). ``threads``: torch's intra-op threads."""
    from safetensors.torch import load_file, save_file

    if spec.flip:
        raise ValueError("the embedding-block study evaluates with flip off (its test features hold no mirror "
                         "images): set eval: {flip: false} in the spec")
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    cache_dir, run_dir, log_dir = out / "features", out / "runs", out / "logs"
    for folder in (cache_dir, run_dir, log_dir):
        folder.mkdir(parents=True, exist_ok=True)
    missing = [b for b in spec.bins if not Path(b).is_file()]
    if missing:
        raise FileNotFoundError(f"eval set(s) {missing} do not exist: prepare them first, or leave them out of the "
                                "spec's eval bins")
    base = arm_config(spec, next(iter(spec.arms)), spec.seeds[0])
    backbone = load_starting_model(base)
    trunk, start_block = split_backbone(backbone)
    model_hash = fingerprint(model_files(base.model.init_from))
    sets = {Path(b).stem: bin_features(b, trunk, cache_dir, model_hash) for b in spec.bins}
    train: Features | None = None
    env = environment.describe("cpu")
    results = out / "results.csv"
    rows = {(r["arm"], r["seed"]): r for r in study.read_results(results)}
    failed = []
    for seed in spec.seeds:
        for arm in spec.arms:
            old = rows.get((arm, str(seed)), {})
            todo = {name: f for name, f in sets.items() if not old.get(f"{name}_acc")}  # sets without a result
            if not todo:
                continue
            config = arm_config(spec, arm, seed)
            weights, log = run_dir / f"{arm}_s{seed}.safetensors", log_dir / f"{arm}_s{seed}.json"
            block = _copy(start_block)
            try:
                if weights.is_file():
                    block.load_state_dict({k[6:]: v for k, v in load_file(weights).items() if k.startswith("block.")})
                    train_wall = float(json.loads(log.read_text())["train_wall_s"])
                else:
                    if config.steps and train is None:
                        train = train_features(config, trunk, cache_dir, model_hash)
                    start = time.perf_counter()
                    loss, losses = train_block(config, block, train, train.num_classes if train else 0)
                    train_wall = time.perf_counter() - start
                    save_file({**{f"block.{k}": v.contiguous() for k, v in block.state_dict().items()},
                               **{f"loss.{k}": v.contiguous() for k, v in loss.state_dict().items()}}, weights)
                    _write_json(log, {"arm": arm, "seed": seed, "steps": config.steps, "train_wall_s": train_wall,
                                      "losses": losses})
                start = time.perf_counter()
                evaluated = evaluate(block, todo, spec.far)
                eval_wall = time.perf_counter() - start + float(old.get("eval_wall_s") or 0)
                row = result_row(arm, seed, config.steps, train_wall, eval_wall, evaluated, spec.far)
            except (FloatingPointError, ValueError) as err:
                failed.append((arm, seed, f"{type(err).__name__}: {err}"))
                continue
            rows[(arm, str(seed))] = old | {k: str(v) for k, v in (row | env).items()}  # earlier sets' cells kept
            _write_results(spec, results, list(rows.values()))
    _write_json(out / "embedding_block.json", {"spec": {"preset": spec.preset, "overrides": spec.overrides,
                "arms": spec.arms, "seeds": spec.seeds, "bins": spec.bins, "far": spec.far},
                "model_sha256": model_hash, "extract_seconds": {
                    **{name: f.seconds for name, f in sets.items()}, **({"train": train.seconds} if train else {})}})
    return failed


def _copy(block: EmbeddingBlock) -> nn.Module:
    import copy

    return copy.deepcopy(block)


def _write_results(spec: study.StudySpec, path: Path, rows: list[dict[str, str]]) -> None:
    order = {arm: i for i, arm in enumerate(spec.arms)}
    rows = sorted(rows, key=lambda r: (int(r["seed"]), order.get(r["arm"], len(order)), r["arm"]))
    study._write_csv(path, study.columns(spec), rows)
