"""Where embeddings come from: an ``.npz`` file (any model) or an embedder callable ``paths -> (N, D)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from marginface.cleaning.centroids import labels_from_names

#: ``embedder(paths) -> (N, D) float32`` L2-normalised rows (e.g. a checkpoint, or FaceRecognizer.embed).
Embedder = Callable[[Sequence[Path]], np.ndarray]


@dataclass(frozen=True)
class LabelledEmbeddings:
    """Image names (``identity/file``), (N,) labels, identity names (index = label), (N, D) embeddings."""

    names: list[str]
    labels: np.ndarray
    classes: list[str]
    embeddings: np.ndarray


def from_names(names: Sequence[str], embeddings: np.ndarray) -> LabelledEmbeddings:
    if len(names) != len(embeddings):
        raise ValueError(f"{len(names)} names but {len(embeddings)} embeddings")
    labels, classes = labels_from_names(names)
    return LabelledEmbeddings(list(names), labels, classes, np.asarray(embeddings, np.float32))


def load_npz(path: str | Path) -> LabelledEmbeddings:
    """An embeddings file as ``marginface eval --embeddings`` reads it (identity = folder part of the name)."""
    from marginface.evaluation.verification import load_embeddings_file

    return from_names(*load_embeddings_file(path))


def save_npz(path: str | Path, data: LabelledEmbeddings) -> Path:
    """Write ``names``/``embeddings`` atomically in the format :func:`load_npz` reads."""
    import os

    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, names=np.array(data.names, dtype=str), embeddings=data.embeddings)
    os.replace(tmp, path)
    return path


def image_names(root: str | Path) -> list[str]:
    """``identity/file`` names of the images under ``root/<identity>/`` (sorted)."""
    from marginface.data.folder import IMAGE_EXTENSIONS

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (expected root/<identity>/<image>)")
    return sorted(p.relative_to(root).as_posix() for p in root.glob("*/*") if p.suffix.lower() in IMAGE_EXTENSIONS)


def embed_folder(root: str | Path, embedder: Embedder) -> LabelledEmbeddings:
    """Embed every ``root/<identity>/<image>`` with ``embedder``."""
    names = image_names(root)
    if not names:
        raise ValueError(f"no images under {root}")
    emb = np.asarray(embedder([Path(root) / n for n in names]), np.float32)
    if emb.shape[0] != len(names):
        raise ValueError(f"the embedder returned {emb.shape[0]} rows for {len(names)} images")
    return from_names(names, emb)


def checkpoint_embedder(checkpoint: str | Path, backbone: str = "mobilefacenet", embedding_size: int = 128, *,
                        batch_size: int = 128, flip: bool = True, workers: int = 0) -> Embedder:
    """An :data:`Embedder` from a marginface safetensors checkpoint, for *aligned* 112x112 images (flip TTA)."""
    from marginface.evaluation.embed import embed_files, load_backbone

    model = load_backbone(backbone, checkpoint, embedding_size)

    def embed(paths: Sequence[Path]) -> np.ndarray:
        return embed_files(model, paths, preprocess=None, batch_size=batch_size, flip=flip, workers=workers)

    return embed
