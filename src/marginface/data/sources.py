"""The training images a run names (its ``data`` section): synthetic identities, a folder tree, or a .rec file.

One function for the trainer (``training/data.py``, from its typed ``DataConfig``) and for whoever re-opens a
run's data from its saved ``config.json`` (``marginface.runs.model``, for the analysis figures).
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset


def open_training_data(source: str, path: str | Path | None = None, *, synthetic_identities: int = 200,
                       synthetic_images_per_identity: int = 20, synthetic_seed: int = 0,
                       exclude_identities: str | None = None, image_list: str | None = None) -> Dataset:
    """The dataset of ``source`` ('synthetic', 'folder' or 'rec'), yielding ``(image (3, 112, 112), label)``; it
    has ``num_classes``. The keyword arguments are the ``data.*`` fields of a run's configuration."""
    if source == "synthetic":
        from marginface.data.synthetic import SyntheticFaces

        return SyntheticFaces(synthetic_identities, synthetic_images_per_identity, synthetic_seed)
    path = Path(path)
    if source == "folder":
        if not path.is_dir():
            raise FileNotFoundError(f"data.path {path} is not a folder (expected root/<identity>/<image>)")
        from marginface.data.folder import FolderDataset
        from marginface.data.lists import read_lines

        exclude = read_lines(exclude_identities, "data.exclude_identities") if exclude_identities else None
        keep = read_lines(image_list, "data.image_list") if image_list else None
        return FolderDataset(path, exclude_identities=exclude, image_list=keep)
    from marginface.data.recordio import RecordIODataset

    if not (path.exists() or path.with_suffix(".rec").exists()):
        raise FileNotFoundError(f"data.path {path}: no such .rec file (expected train.rec beside train.idx)")
    return RecordIODataset(path)
