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
    root: str = ""  #: folder the images are under ("" if unknown), for contact sheets
    paths: list[str] | None = None  #: each image's path relative to ``root`` (None: the name is the path)

    def image_path(self, i: int) -> Path | None:
        """Where image ``i`` is on disk, or None when the root is unknown."""
        if not self.root:
            return None
        return Path(self.root) / (self.paths[i] if self.paths is not None else self.names[i])


def from_names(names: Sequence[str], embeddings: np.ndarray) -> LabelledEmbeddings:
    if len(names) != len(embeddings):
        raise ValueError(f"{len(names)} names but {len(embeddings)} embeddings")
    labels, classes = labels_from_names(names)
    return LabelledEmbeddings(list(names), labels, classes, np.asarray(embeddings, np.float32))


def load_npz(path: str | Path) -> LabelledEmbeddings:
    """An embeddings file as ``marginface eval --embeddings`` reads it (identity = folder part of the name)."""
    from marginface.evaluation.verification import load_embeddings_file

    names, embeddings = load_embeddings_file(path)
    data = from_names(names, embeddings)
    root, paths = "", None
    if Path(path).suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:  # optional keys written by save_npz
            root = str(z["root"]) if "root" in z.files else ""
            paths = [str(p) for p in z["paths"]] if "paths" in z.files else None
    if paths is not None and len(paths) != len(names):
        raise ValueError(f"{path}: {len(paths)} paths but {len(names)} names")
    return LabelledEmbeddings(data.names, data.labels, data.classes, data.embeddings, root, paths)


def save_npz(path: str | Path, data: LabelledEmbeddings) -> Path:
    """Write ``names``/``embeddings`` atomically in the format :func:`load_npz` reads."""
    from marginface.files import atomic_write

    path = Path(path)
    extra = {"root": np.array(data.root, dtype=str)}
    if data.paths is not None:
        extra["paths"] = np.array(data.paths, dtype=str)
    # the temporary name ends in .npz, so np.savez writes to it as named (it appends .npz otherwise)
    return atomic_write(path, lambda tmp: np.savez(tmp, names=np.array(data.names, dtype=str),
                                                    embeddings=data.embeddings, **extra))


def concat(parts: Sequence[LabelledEmbeddings]) -> LabelledEmbeddings:
    """One set from several embedded from the same root (an image named twice is kept once)."""
    roots = {p.root for p in parts}
    if len(roots) > 1:
        raise ValueError(f"cannot concatenate embeddings of different image roots: {sorted(roots)}")
    seen: dict[str, tuple[np.ndarray, str]] = {}
    for part in parts:
        for i, name in enumerate(part.names):
            seen.setdefault(name, (part.embeddings[i], part.paths[i] if part.paths is not None else name))
    names = sorted(seen)
    data = from_names(names, np.stack([seen[n][0] for n in names]))
    return LabelledEmbeddings(data.names, data.labels, data.classes, data.embeddings, roots.pop(),
                              [seen[n][1] for n in names])


def image_names(root: str | Path) -> list[str]:
    """``identity/file`` names of the images under ``root/<identity>/`` (sorted)."""
    return [name for name, _ in select_images(root)]


def select_images(root: str | Path, pattern: str = "*/*", max_per_identity: int | None = None,
                  min_images: int = 1, skip_per_identity: int = 0) -> list[tuple[str, str]]:
    """``(name, path relative to root)`` of the images matching ``pattern`` under ``root`` (sorted).

    The identity is the first folder of the relative path; deeper folders are folded into the file part of the
    name (``001/frontal/01.jpg`` -> ``001/frontal__01.jpg``) so that every name is ``identity/file``. Identities
    with fewer than ``min_images`` matches are skipped; of the others, the sorted images from position
    ``skip_per_identity`` to ``max_per_identity`` (exclusive) are kept — so a later call with ``skip_per_identity``
    = an earlier ``max_per_identity`` embeds the rest, and :func:`concat` joins the two files.
    """
    from marginface.data.folder import IMAGE_EXTENSIONS

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (expected root/<identity>/<image>)")
    rel = sorted(p.relative_to(root).as_posix() for p in root.glob(pattern) if p.suffix.lower() in IMAGE_EXTENSIONS)
    by_identity: dict[str, list[str]] = {}
    for r in rel:
        if "/" in r:
            by_identity.setdefault(r.split("/", 1)[0], []).append(r)
    out = []
    for identity, files in sorted(by_identity.items()):
        if len(files) >= min_images:
            out += [(identity + "/" + f.split("/", 1)[1].replace("/", "__"), f)
                    for f in files[skip_per_identity:max_per_identity]]
    return out


def embed_folder(root: str | Path, embedder: Embedder, pattern: str = "*/*", max_per_identity: int | None = None,
                 min_images: int = 1, skip_per_identity: int = 0) -> LabelledEmbeddings:
    """Embed the images :func:`select_images` picks under ``root`` with ``embedder``."""
    chosen = select_images(root, pattern, max_per_identity, min_images, skip_per_identity)
    if not chosen:
        raise ValueError(f"no images matching {pattern!r} under {root}")
    emb = np.asarray(embedder([Path(root) / rel for _, rel in chosen]), np.float32)
    if emb.shape[0] != len(chosen):
        raise ValueError(f"the embedder returned {emb.shape[0]} rows for {len(chosen)} images")
    data = from_names([name for name, _ in chosen], emb)
    return LabelledEmbeddings(data.names, data.labels, data.classes, data.embeddings, str(Path(root).resolve()),
                              [rel for _, rel in chosen])


def checkpoint_embedder(checkpoint: str | Path, backbone: str = "mobilefacenet", embedding_size: int = 128, *,
                        batch_size: int = 128, flip: bool = True, workers: int = 0) -> Embedder:
    """An :data:`Embedder` from a marginface safetensors checkpoint, for *aligned* 112x112 images (flip TTA)."""
    from marginface.evaluation.embed import embed_files
    from marginface.models.backbone import load_backbone

    model = load_backbone(backbone, checkpoint, embedding_size)

    def embed(paths: Sequence[Path]) -> np.ndarray:
        return embed_files(model, paths, preprocess=None, batch_size=batch_size, flip=flip, workers=workers)

    return embed


def model_embedder(path: str | Path, *, backbone: str | None = None, embedding_size: int | None = None,
                   config: str | Path | None = None, batch_size: int = 128) -> Embedder:
    """An :data:`Embedder` from any model :func:`marginface.models.load_model` reads (a marginface
    safetensors file with its card, an insightface ``.pth``, ``.onnx``, an MXNet model-zoo prefix such as
    ``models/insightface_mobilefacenet_y1/model`` or its ``-0000.params``), for *aligned* faces of the model's
    input size; flip TTA as the model card says. ``backbone`` / ``embedding_size`` / ``config``: for files
    without a card only."""
    from PIL import Image
    from tqdm import tqdm

    from marginface.models.load import load_model

    model = load_model(path, backbone=backbone, embedding_size=embedding_size, config=config)
    size = model.card.input.size

    def read(p: Path) -> np.ndarray:
        with Image.open(p) as im:
            if im.size != (size, size):
                raise ValueError(f"{p} is {im.size[0]}x{im.size[1]}, the model takes aligned {size}x{size} faces "
                                 "(run marginface align first, or embed raw photos with `model=dlib`)")
            return np.asarray(im.convert("RGB"))

    def embed(paths: Sequence[Path]) -> np.ndarray:
        out = [np.zeros((0, model.card.embedding_size), np.float32)]
        for i in tqdm(range(0, len(paths), batch_size), desc="embed", unit="batch"):
            batch = np.stack([read(p) for p in paths[i: i + batch_size]]).transpose(0, 3, 1, 2)
            out.append(model.embed_pixels(batch))
        return np.concatenate(out)

    return embed
