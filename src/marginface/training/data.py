"""Training data: the dataset named by the config, and a data order that is a pure function of the step.

Batch ``step`` of a run is ``permutation(seed, epoch)[pos * B : (pos + 1) * B]`` with ``epoch, pos =
divmod(step, batches_per_epoch)``; each rank takes its contiguous slice of that global batch, and each sample's
flip is drawn from ``(seed, step, position)``. So the data state of a checkpoint is just its step: a resumed
run, and a run with workers, read exactly the same images in the same order with the same flips.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from marginface.training.config import DataConfig


class StepBatchSampler(Sampler[list[tuple[int, bool]]]):
    """Yields, for steps ``start_step .. total_steps - 1``, this rank's ``(index, flip)`` pairs of the batch."""

    def __init__(self, dataset_size: int, global_batch: int, seed: int, start_step: int, total_steps: int,
                 rank: int = 0, world_size: int = 1, flip: bool = True) -> None:
        if global_batch % world_size:
            raise ValueError(f"batch_size {global_batch} must be divisible by the {world_size} processes")
        if dataset_size < global_batch:
            raise ValueError(f"the dataset has {dataset_size} images, fewer than one batch of {global_batch}")
        self.size, self.batch, self.seed = dataset_size, global_batch, seed
        self.start, self.total = start_step, total_steps
        self.rank, self.world, self.flip = rank, world_size, flip
        self.batches_per_epoch = dataset_size // global_batch  # the last partial batch is dropped
        self._epoch, self._perm = -1, None

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def global_batch_indices(self, step: int) -> torch.Tensor:
        epoch, pos = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.size, generator=gen)
        return self._perm[pos * self.batch:(pos + 1) * self.batch]

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        local = self.batch // self.world
        for step in range(self.start, self.total):
            indices = self.global_batch_indices(step)
            flips = torch.rand(self.batch, generator=torch.Generator().manual_seed(self.seed * 7919 + step)) < 0.5
            rows = slice(self.rank * local, (self.rank + 1) * local)
            yield [(int(i), bool(f) and self.flip) for i, f in zip(indices[rows], flips[rows])]


class FlipByIndex(Dataset):
    """Wraps a dataset of ``(image (3,H,W), label)`` so that ``dataset[(index, flip)]`` mirrors on request."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, bool]) -> tuple[torch.Tensor, int]:
        index, flip = item
        image, label = self.dataset[index]
        return (image.flip(-1) if flip else image), label


def build_dataset(config: DataConfig) -> Dataset:
    """The training dataset named by ``config``; it has ``num_classes``."""
    if config.source == "synthetic":
        from marginface.data.synthetic import SyntheticFaces

        return SyntheticFaces(config.synthetic_identities, config.synthetic_images_per_identity, config.synthetic_seed)
    path = Path(config.path)
    if config.source == "folder":
        if not path.is_dir():
            raise FileNotFoundError(f"data.path {path} is not a folder (expected root/<identity>/<image>)")
        from marginface.cleaning.lists import read_lines
        from marginface.data.folder import FolderDataset

        exclude = read_lines(config.exclude_identities, "data.exclude_identities") \
            if config.exclude_identities else None
        keep = read_lines(config.image_list, "data.image_list") if config.image_list else None
        return FolderDataset(path, exclude_identities=exclude, image_list=keep)
    from marginface.data.recordio import RecordIODataset

    if not (path.exists() or path.with_suffix(".rec").exists()):
        raise FileNotFoundError(f"data.path {path}: no such .rec file (expected train.rec beside train.idx)")
    return RecordIODataset(path)
