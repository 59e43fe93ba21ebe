"""Identity-balanced batches: P identities x K images each, a pure function of ``(seed, step)``.

A triplet loss mines its triplets inside the batch, so every identity of a batch needs several images there;
a random batch of 64 images from thousands of identities holds almost no positive pair. The sampler builds
batch ``step`` of a run as follows (all draws from NumPy's PCG64 seeded by tuples, the same on every platform):

1. *Identity epochs.* The eligible identities are shuffled once per identity epoch (``(seed, 0, epoch)``) and
   consumed P at a time: ``epoch, pos = divmod(step, num_eligible // P)``, the batch takes identities
   ``perm[pos * P : (pos + 1) * P]``. Every eligible identity appears once per identity epoch (the last
   ``num_eligible % P`` of each shuffle wait for the next one).
2. *Images.* For each of the P identities, in order, K of its images from the step's generator
   ``(seed, 1, step)``: without replacement when it has >= K; with fewer (``small_identities='replace'``) a
   random order of all of them repeated cyclically up to K, so each appears ``floor(K / n)`` or ``ceil(K / n)``
   times. ``small_identities='skip'`` leaves such identities out of the shuffle instead. Both are counted in
   :attr:`PKBatchSampler.report`.
3. *Flips* (p = 0.5) from ``(seed, 2, step)``, one per position of the global batch.

The global batch is identity-major: positions ``i*K .. i*K+K-1`` hold identity ``i`` of the step. Under
torchrun, rank ``r`` of R takes identities ``r*P/R .. (r+1)*P/R - 1`` (a contiguous slice of ``P*K/R``
positions), so ``P`` must be divisible by R and each rank's batch holds whole identities (its BatchNorm sees K
images of each). The triplet head all-gathers the embeddings, so mining still runs over the whole ``P x K``.

Because a batch depends only on ``(seed, step)`` and the labels, a checkpoint's step is the sampler's whole state:
a resumed run, or a run with loader workers, reads exactly the same images with the same flips.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import Sampler

SMALL_IDENTITIES = ("replace", "skip")


def dataset_labels(dataset: Any) -> np.ndarray:
    """``(N,)`` int64 label of every sample, read without decoding any image.

    Supports :class:`~marginface.data.FolderDataset` (its ``samples``), :class:`~marginface.data.SyntheticFaces`
    (label ``i // images_per_identity``), :class:`~marginface.data.RecordIODataset` (the identity range records of
    header 0 when present, else every record's header, with a progress bar) and any dataset with a ``labels``
    sequence.
    """
    from marginface.data.recordio import RecordIODataset
    from marginface.data.synthetic import SyntheticFaces

    if isinstance(dataset, SyntheticFaces):
        return np.arange(len(dataset), dtype=np.int64) // dataset.images_per_identity
    if isinstance(dataset, RecordIODataset):
        return _recordio_labels(dataset)
    if hasattr(dataset, "samples"):
        return np.asarray([label for _, label in dataset.samples], dtype=np.int64)
    if hasattr(dataset, "labels"):
        return np.asarray(dataset.labels, dtype=np.int64)
    raise TypeError(f"the P x K sampler needs every sample's label without decoding images, but "
                    f"{type(dataset).__name__} has neither .samples nor .labels: add a .labels sequence")


def _recordio_labels(dataset: Any) -> np.ndarray:
    """Labels of a RecordIODataset: from its identity records ``[start, end)`` when it has them, else a scan."""
    from marginface.data.recordio import label_of, unpack

    records, keys = dataset.records, dataset.keys
    if isinstance(keys, range) and keys.step == 1:  # header-0 layout: image keys 1..N, then one record per identity
        first_id = keys.stop
        labels = np.full(len(keys), -1, dtype=np.int64)
        for label in range(dataset.num_classes):
            key = first_id + label
            if key not in records.index:
                break
            header, _ = unpack(records.read(key), f"identity record {key} of {records.rec_path}")
            start, end = int(header.label[0]), int(header.label[1])
            labels[start - keys.start:end - keys.start] = label
        if (labels >= 0).all():
            return labels
    from tqdm.auto import tqdm

    return np.asarray([label_of(dataset.read_record(i)[0]) for i in tqdm(
        range(len(dataset)), desc="reading labels", unit="rec", leave=False)], dtype=np.int64)


class PKBatchSampler(Sampler[list[tuple[int, bool]]]):
    """Yields, for steps ``start_step .. total_steps - 1``, this rank's ``(index, flip)`` pairs of a P x K batch.

    Args:
        labels: ``(N,)`` label of every sample (:func:`dataset_labels`).
        identities_per_batch: P, over all ranks.
        images_per_identity: K (>= 2: a triplet needs a positive).
        seed, start_step, total_steps: the run's seed and step range.
        rank, world_size: this process and the number of processes (P must be divisible by it).
        flip: draw random horizontal flips (else every flip is False).
        small_identities: identities with fewer than K images: ``'replace'`` (repeat their images) or ``'skip'``.
    """

    def __init__(self, labels: np.ndarray, identities_per_batch: int, images_per_identity: int, seed: int,
                 start_step: int, total_steps: int, rank: int = 0, world_size: int = 1, flip: bool = True,
                 small_identities: str = "replace") -> None:
        if small_identities not in SMALL_IDENTITIES:
            raise ValueError(f"small_identities must be one of {SMALL_IDENTITIES}, got {small_identities!r}")
        if images_per_identity < 2 or identities_per_batch < 2:
            raise ValueError(f"a P x K batch needs P >= 2 identities and K >= 2 images each, got "
                             f"P={identities_per_batch}, K={images_per_identity}")
        if identities_per_batch % world_size:
            raise ValueError(f"P = {identities_per_batch} identities per batch must be divisible by the {world_size} "
                             "processes (each rank takes whole identities): change batch_size or "
                             "data.pk_images_per_identity")
        self.P, self.K, self.seed = identities_per_batch, images_per_identity, seed
        self.start, self.total, self.rank, self.world, self.flip = start_step, total_steps, rank, world_size, flip
        self.groups, self.report = self._group(np.asarray(labels, dtype=np.int64), small_identities)
        if len(self.groups) < self.P:
            raise ValueError(f"only {len(self.groups)} identities are usable ({self.summary()}), fewer than the "
                             f"P = {self.P} a batch needs: lower batch_size or data.pk_images_per_identity")
        self.batches_per_epoch = len(self.groups) // self.P
        self._epoch, self._perm = -1, None

    def _group(self, labels: np.ndarray, small: str) -> tuple[list[np.ndarray], dict[str, Any]]:
        order = np.argsort(labels, kind="stable")
        ids, starts = np.unique(labels[order], return_index=True)
        groups = np.split(order, starts[1:]) if len(order) else []
        few = [g for g in groups if len(g) < self.K]
        kept = [g for g in groups if len(g) >= self.K] if small == "skip" else groups
        report = {"images": int(len(labels)), "identities": int(len(ids)), "identities_used": len(kept),
                  "images_per_identity": self.K, "identities_per_batch": self.P, "small_identities": small,
                  "identities_below_k": len(few), "images_of_identities_below_k": int(sum(map(len, few))),
                  "single_image_identities": int(sum(len(g) == 1 for g in groups))}
        return kept, report

    def summary(self) -> str:
        """One line for the log: how many identities are used and what happened to those with fewer than K."""
        r = self.report
        verb = "repeat images" if r["small_identities"] == "replace" else "are skipped"
        return (f"P x K sampler: P={self.P} x K={self.K}; {r['identities_used']} of {r['identities']} identities "
                f"used; {r['identities_below_k']} have < {self.K} images and {verb} "
                f"({r['images_of_identities_below_k']} images; {r['single_image_identities']} single-image)")

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def _identities(self, step: int) -> np.ndarray:
        epoch, pos = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.groups))
        return self._perm[pos * self.P:(pos + 1) * self.P]

    def global_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """``(indices (P*K,), flips (P*K,) bool)`` of the whole batch of ``step`` (identity-major)."""
        rng = np.random.default_rng([self.seed, 1, step])
        parts = []
        for identity in self._identities(step):
            group = self.groups[identity]
            if len(group) >= self.K:
                parts.append(group[rng.choice(len(group), self.K, replace=False)])
            else:
                parts.append(group[np.resize(rng.permutation(len(group)), self.K)])
        flips = np.random.default_rng([self.seed, 2, step]).random(self.P * self.K) < 0.5
        return np.concatenate(parts), flips & self.flip

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        local = self.P * self.K // self.world
        rows = slice(self.rank * local, (self.rank + 1) * local)
        for step in range(self.start, self.total):
            indices, flips = self.global_batch(step)
            yield [(int(i), bool(f)) for i, f in zip(indices[rows], flips[rows])]


def pk_batch_sampler(dataset: Any, config: Any, start_step: int, dist_info: Any) -> PKBatchSampler:
    """The trainer's P x K sampler from a ``TrainConfig`` (P = batch_size / K); the main process prints its
    :meth:`~PKBatchSampler.summary` and writes the counts to ``<output_dir>/pk_sampler.json``."""
    import json
    from pathlib import Path

    from marginface.files import atomic_write_text

    k = config.data.pk_images_per_identity
    sampler = PKBatchSampler(dataset_labels(dataset), config.batch_size // k, k, config.seed, start_step,
                             config.steps, dist_info.rank, dist_info.world_size, flip=config.data.flip,
                             small_identities=config.data.pk_small_identities)
    if dist_info.is_main:
        print(sampler.summary())
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "pk_sampler.json", json.dumps(sampler.report, indent=1))
    return sampler
