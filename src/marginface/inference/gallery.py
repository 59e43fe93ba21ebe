"""``Gallery``: enrolled identities (one template each), top-k search on faiss, saved to a folder without pickle.

**Template.** An identity's template is the L2-normalised mean of the L2-normalised embeddings of its images:
``t = sum_i e_i / ||sum_i e_i||``. Enrolling more images later updates it exactly: the gallery keeps each
identity's image count and ``||sum_i e_i||`` (so the sum is ``t * ||sum||``).

**Search.** Scores are cosines (inner products of unit vectors). Exact search (``faiss.knn`` on the template
matrix, no copy) is the default up to :data:`APPROXIMATE_ABOVE` identities; above it, an IVF index
(``IndexIVFFlat``, ``nlist`` ~ 1 cell per 1,000 identities, ``nprobe`` cells visited) built on first use;
its recall@1 against exact search is measured in ``benchmarks/inference.py`` and reported in
docs/inference.md. ``exact=True/False`` overrides per call.

**Compatibility.** A gallery records the model card's compatibility key (weights SHA-256 + precision) and
refuses probes and enrolments from any other model: embeddings of two models are not comparable.

**On disk** (``G/``, no pickle anywhere)::

    G/CURRENT                 the name of the complete version to read, e.g. "v000004" (replaced atomically)
    G/v000004/vectors.npy     (N, D) float32 templates, row i = identity of row i
    G/v000004/gallery.sqlite  meta (format, model key and card, D, N) and identities (row, name, images, norm)
    G/v000003/                the previous version, kept as a backup

A save writes a new version in a temporary folder, fsyncs it, renames it into place and only then replaces
``CURRENT`` (``os.replace``, atomic): a crash at any point leaves ``CURRENT`` naming a complete version, so
nothing already saved is lost.

**Several writers.** A save holds the folder's writer lock (``G/.lock``, see :mod:`.locking`) and is refused
(:class:`GalleryConflictError`) when ``CURRENT`` is no longer the version this gallery was loaded from: another
writer saved in between, and saving would drop its identities. :meth:`Gallery.update` (what ``marginface enroll``
uses) holds the lock across load -> change -> save, so two enrolments into one folder both land, one after the
other. Temporary folders of a save in progress (``.tmp-<version>-<pid>-<thread>``) are removed only when their
process is gone.

**Re-enrolment.** Images enrolled from files are remembered by the SHA-256 of their bytes; enrolling the same
file again (under any identity) skips it and says so, so re-running ``enroll`` on a folder adds only new photos.

A damaged current version (files truncated or edited after the fact) is a clear error naming the file and the
intact previous version to load instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from marginface.errors import UserError
from marginface.files import atomic_write_text, fsync_dir, fsync_tree
from marginface.inference.locking import pid_alive, writer_lock

#: above this many identities a search without ``exact=`` uses the IVF index (see docs/inference.md).
APPROXIMATE_ABOVE = 250_000
FORMAT = "marginface-gallery-1"
_VECTORS, _DB, _CURRENT = "vectors.npy", "gallery.sqlite", "CURRENT"


@dataclass(frozen=True)
class Match:
    """One search result: the identity's name and its template's cosine with the probe."""

    name: str
    score: float


class GalleryConflictError(UserError):
    """Another writer saved the gallery folder after this gallery was loaded: saving would lose its changes."""


@dataclass
class Enrolment:
    """Embeddings of a folder's photos, computed but not yet in a gallery (see :meth:`Gallery.embed_folder`).

    ``vectors[name]`` is (M, D) float32 (one row per image) and ``hashes[name]`` the M SHA-256 hex digests of the
    image files' bytes, in the same order.
    """

    model_key: str
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    hashes: dict[str, list[str]] = field(default_factory=dict)
    identities: int = 0
    skipped: list[dict] = field(default_factory=list)
    several_faces: list[dict] = field(default_factory=list)
    already: list[dict] = field(default_factory=list)  # images skipped because their bytes are enrolled


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _key_of(model: Any) -> str:
    """A ModelCard's compatibility key (or the key itself when a string is given)."""
    return model if isinstance(model, str) else model.compatibility_key


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a file name's undecodable bytes, surrogate-escaped by the OS layer
        return False
    return True


def printable_path(path: str | os.PathLike) -> str:
    """A path as text that can always be printed: undecodable bytes shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _bad_folder(paths: list[Path], skip_bad: bool, skipped: list[dict]) -> None:
    """An identity folder whose name is not UTF-8: an error naming it, or (``skip_bad``) its images listed."""
    folder = printable_path(paths[0].parent)
    problem = (f"identity folder {folder} is not a valid UTF-8 name (identity names are stored as text): rename "
               "it, or pass `skip_bad=True` to skip it")
    if not skip_bad:
        raise UserError(problem)
    skipped += [{"path": printable_path(p), "error": problem} for p in paths]


def _key_parts(key: str) -> dict[str, str]:
    """A compatibility key ``sha256:precision[:BGR]`` split into named parts."""
    parts = key.split(":")
    return {"weights": parts[0], "precision": parts[1] if len(parts) > 1 else "?",
            "channel order": parts[2] if len(parts) > 2 else "RGB"}


def _describe_key(key: str) -> str:
    p = _key_parts(key)
    return f"sha256 {p['weights'][:16]}... {p['precision']} {p['channel order']}"


def _key_difference(ours: str, theirs: str) -> str:
    """What differs between two compatibility keys, e.g. "precision fp32 vs int8"."""
    a, b = _key_parts(ours), _key_parts(theirs)
    diff = [f"{k} {a[k]} vs {b[k]}" for k in ("precision", "channel order") if a[k] != b[k]]
    if a["weights"] != b["weights"]:
        n = next((i for i, (x, y) in enumerate(zip(a["weights"], b["weights"])) if x != y), 0)
        width = max(16, n + 4)  # enough digits to show where they differ
        diff.append(f"weights sha256 {a['weights'][:width] or '(none)'} vs {b['weights'][:width] or '(none)'}")
    return "; ".join(diff) or "different keys"


def _unit_rows(x: np.ndarray, dim: int, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    x = x[None] if x.ndim == 1 else x
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{what} must be (N, {dim}), got shape {x.shape}")
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    if not np.isfinite(norms).all() or (norms == 0).any():
        raise ValueError(f"{what} contain NaN/inf or all-zero rows")
    return (x / norms).astype(np.float32)


class Gallery:
    """Identities and their templates for one model. Build with :meth:`create` or :meth:`load`.

    Args:
        model_key: the model card's ``compatibility_key``.
        dim: embedding size D.
        card_json: the model card (JSON), kept for ``marginface info``-style reporting.
    """

    def __init__(self, model_key: str, dim: int, card_json: str = "{}") -> None:
        self.model_key, self.dim, self.card_json = model_key, int(dim), card_json
        self._vectors = np.zeros((0, self.dim), np.float32)  # capacity >= len; rows [0, len) used
        self._names: list[str] = []
        self._row: dict[str, int] = {}
        self._images = np.zeros(0, np.int64)
        self._norms = np.zeros(0, np.float64)  # ||sum of normalised embeddings|| per identity
        self._index: dict[str, Any] = {}  # "ivf" -> (faiss index, rows indexed)
        self._hashes: dict[str, str] = {}  # SHA-256 of an enrolled image file -> its identity
        self.path: Path | None = None
        self._base: str | None = None  # the CURRENT of self.path when loaded or last saved (conflict check)
        self.model_path = ""  # where the enrolling model's file was (a default for ``marginface identify``)
        self.approximate_above, self.nprobe = APPROXIMATE_ABOVE, 64  # see docs/inference.md (recall)

    @classmethod
    def create(cls, model: Any) -> Gallery:
        """An empty gallery for ``model`` (a ModelCard, e.g. ``recognizer.card``)."""
        return cls(model.compatibility_key, model.embedding_size, model.to_json())

    # ------------------------------------------------------------------------------------------ contents
    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: str) -> bool:
        return name in self._row

    @property
    def names(self) -> list[str]:
        return list(self._names)

    @property
    def vectors(self) -> np.ndarray:
        """(N, D) float32 templates (a view; row i belongs to ``names[i]``)."""
        return self._vectors[: len(self)]

    def template(self, name: str) -> np.ndarray:
        return self.vectors[self._lookup(name)].copy()

    def images(self, name: str) -> int:
        """How many images the template of ``name`` averages."""
        return int(self._images[self._lookup(name)])

    def _lookup(self, name: str) -> int:
        if name not in self._row:
            raise KeyError(f"identity {name!r} is not in the gallery ({len(self)} identities)")
        return self._row[name]

    def check_model(self, model: Any, what: str = "probes") -> None:
        """Raise UserError unless ``model`` (card or key) is the gallery's model."""
        key = _key_of(model)
        if key != self.model_key:
            where = f" at {self.path}" if self.path else ""
            raise UserError(f"the gallery{where} was enrolled with model {_describe_key(self.model_key)} but these "
                            f"{what} come from model {_describe_key(key)} ({_key_difference(self.model_key, key)}): "
                            "embeddings of different models (or precisions) are not comparable; use the gallery's "
                            "model or enrol a new gallery with this one")

    # ------------------------------------------------------------------------------------------ changes
    def add(self, name: str, embeddings: np.ndarray, model: Any) -> None:
        """Add (M, D) embeddings of one identity (new, or more images of an enrolled one) from ``model``."""
        self.check_model(model, "embeddings")
        e = _unit_rows(embeddings, self.dim, f"embeddings of {name!r}")
        if name in self._row:
            row = self._row[name]
            total = self._vectors[row].astype(np.float64) * self._norms[row] + e.astype(np.float64).sum(0)
            self._set_row(row, total, self._images[row] + len(e))
            self._index.clear()
        else:
            self.add_many([name], e.astype(np.float64).sum(0, keepdims=True), model, images=[len(e)])

    def add_many(self, names: Sequence[str], sums: np.ndarray, model: Any, images: Sequence[int] | None = None
                 ) -> None:
        """Enrol new identities at once: ``names`` (N,) and the (N, D) sums of their normalised embeddings
        (one unit embedding each is its own sum); ``images`` (N,) counts, default 1."""
        self.check_model(model, "embeddings")
        sums = np.asarray(sums)
        if sums.ndim != 2 or sums.shape != (len(names), self.dim):
            raise ValueError(f"sums must be ({len(names)}, {self.dim}), got {sums.shape}")
        for name in names:
            if not isinstance(name, str) or not name:
                raise ValueError(f"identity names must be non-empty strings, got {name!r}")
        duplicates = self._duplicates(names)
        if duplicates:
            raise ValueError(f"identities already enrolled or repeated: {sorted(duplicates)[:5]}; use add() to "
                             "enrol more images of an identity")
        norms = np.sqrt(np.einsum("ij,ij->i", sums, sums, dtype=np.float64))
        if not np.isfinite(norms).all() or (norms == 0).any():
            raise ValueError("embedding sums contain NaN/inf or zero rows")
        start = len(self)
        self.reserve(start + len(names))
        self._vectors[start : start + len(names)] = sums / norms[:, None]
        self._images = np.concatenate([self._images, np.asarray(images or [1] * len(names), np.int64)])
        self._norms = np.concatenate([self._norms, norms])
        self._names.extend(names)
        self._row.update({n: start + i for i, n in enumerate(names)})

    def _duplicates(self, names: Sequence[str]) -> set[str]:
        seen, dup = set(), set()
        for n in names:
            if n in seen or n in self._row:
                dup.add(n)
            seen.add(n)
        return dup

    def reserve(self, rows: int) -> None:
        """Make room for ``rows`` identities at once (bulk enrolment without repeated growth)."""
        if rows > len(self._vectors):
            grown = np.zeros((max(rows, 2 * len(self._vectors)), self.dim), np.float32)
            grown[: len(self)] = self.vectors
            self._vectors = grown

    def _set_row(self, row: int, total: np.ndarray, images: int) -> None:
        norm = float(np.linalg.norm(total))
        self._vectors[row], self._norms[row], self._images[row] = total / norm, norm, images

    def remove(self, name: str) -> None:
        """Forget ``name`` (its row is filled by the last identity's)."""
        row, last = self._lookup(name), len(self) - 1
        if row != last:
            moved = self._names[last]
            self._vectors[row], self._names[row] = self._vectors[last], moved
            self._images[row], self._norms[row] = self._images[last], self._norms[last]
            self._row[moved] = row
        del self._row[name]
        self._hashes = {h: n for h, n in self._hashes.items() if n != name}
        self._names.pop()
        self._images, self._norms = self._images[:last], self._norms[:last]
        self._index.clear()

    def rename(self, old: str, new: str) -> None:
        if new in self._row:
            raise ValueError(f"cannot rename {old!r} to {new!r}: {new!r} is already enrolled")
        if not new:
            raise ValueError("identity names must be non-empty")
        row = self._lookup(old)
        self._names[row] = new
        self._row[new] = self._row.pop(old)
        self._hashes = {h: (new if n == old else n) for h, n in self._hashes.items()}

    # ------------------------------------------------------------------------------------------ search
    def search(self, probes: np.ndarray, k: int = 5, *, model: Any, exact: bool | None = None) -> list[list[Match]]:
        """Top-``k`` identities for each of (P, D) probes from ``model`` (card or key), best first."""
        self.check_model(model)
        scores, rows = self.search_rows(_unit_rows(probes, self.dim, "probes"), k, exact)
        return [[Match(self._names[r], float(s)) for s, r in zip(srow, rrow) if r >= 0]
                for srow, rrow in zip(scores, rows)]

    def search_rows(self, probes: np.ndarray, k: int, exact: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """faiss search of (P, D) unit probes: (P, k) cosines and (P, k) rows (-1 = empty slot).

        Exact search is ``faiss.knn`` straight on the template matrix (no index copy, nothing to build);
        batching probes is what makes it fast (one pass over the templates serves the whole batch).
        """
        import faiss

        if not len(self):
            raise ValueError("the gallery is empty: enrol identities first")
        exact = len(self) <= self.approximate_above if exact is None else exact
        probes, k = np.ascontiguousarray(probes, np.float32), min(k, len(self))
        if exact:
            return faiss.knn(probes, self.vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
        return self._ivf().search(probes, k)

    def _ivf(self) -> Any:
        import faiss

        index, rows = self._index.get("ivf", (None, 0))
        if index is None:
            nlist = int(np.clip(len(self) // 1000, 1, 4096))
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.own_fields = True  # the index owns (and frees) its quantizer
            quantizer.this.disown()
            sample = np.random.default_rng(0).choice(len(self), min(len(self), 40 * nlist), replace=False)
            index.train(self.vectors[np.sort(sample)])
        if rows < len(self):
            index.add(self.vectors[rows:])
        index.nprobe = self.nprobe
        self._index["ivf"] = (index, len(self))
        return index

    # ------------------------------------------------------------------------------------------ enrolment
    def enroll(self, recognizer: Any, name: str, images: Any, **embed_kwargs: Any) -> None:
        """Embed ``images`` (one or many, any input :class:`FaceRecognizer` takes) and add them as ``name``."""
        self.check_model(recognizer.card, "images (the recognizer's model)")
        self.add(name, recognizer.embed(images, **embed_kwargs), recognizer.card)

    def enroll_folder(self, recognizer: Any, folder: str | os.PathLike, skip_bad: bool = False) -> dict[str, Any]:
        """Enrol ``folder/<identity>/<images>`` (progress bar per image); returns what was done (see :meth:`apply`).

        ``skip_bad``: unreadable images and images without a face are skipped and listed instead of raising.
        Image files already enrolled (same bytes) are skipped and listed under ``"already_enrolled"``.
        """
        return self.apply(self.embed_folder(recognizer, folder, skip_bad))

    def embed_folder(self, recognizer: Any, folder: str | os.PathLike, skip_bad: bool = False) -> Enrolment:
        """Embed ``folder/<identity>/<images>`` without changing the gallery; files whose bytes are already
        enrolled here are not embedded again."""
        from tqdm import tqdm

        from marginface.align.pipeline import list_images

        self.check_model(recognizer.card, "images (the recognizer's model)")
        images, _ = list_images(folder)
        by_identity: dict[str, list[Path]] = {}
        for path in images:
            by_identity.setdefault(path.parent.name, []).append(path)
        batch = Enrolment(recognizer.card.compatibility_key, identities=len(by_identity))
        seen: set[str] = set()
        bar = tqdm(total=len(images), desc="enrol", unit="img")
        for name, paths in by_identity.items():
            if not _is_utf8(name):  # stored as text in SQLite: a surrogate-escaped name cannot be
                bar.update(len(paths))
                _bad_folder(paths, skip_bad, batch.skipped)
                continue
            digests = [file_sha256(p) for p in paths]
            fresh = [(p, h) for p, h in zip(paths, digests) if not self._known(h, name, p, seen, batch.already)]
            kept: list[tuple[Path, str]] = []
            vectors, infos = self._embed_identity(recognizer, fresh, skip_bad, batch.skipped, kept) if fresh else (
                np.zeros((0, self.dim), np.float32), [])
            bar.update(len(paths))
            batch.several_faces += [{"path": i.input, "faces": i.faces, "kept": i.kept} for i in infos if i.several]
            if len(vectors):
                batch.vectors[name], batch.hashes[name] = vectors, [h for _, h in kept]
        bar.close()
        return batch

    def _known(self, digest: str, name: str, path: Path, seen: set[str], already: list[dict]) -> bool:
        """Whether an image file (by its SHA-256) is enrolled already or earlier in this folder; lists it if so."""
        if digest in self._hashes or digest in seen:
            already.append({"path": str(path), "identity": self._hashes.get(digest, name)})
            return True
        seen.add(digest)
        return False

    def apply(self, batch: Enrolment) -> dict[str, Any]:
        """Add an :class:`Enrolment`'s images whose bytes are not enrolled yet (another writer may have added
        some since it was embedded); returns counts and the skipped / several-face / already-enrolled lists."""
        self.check_model(batch.model_key, "embeddings")
        already, added = list(batch.already), 0
        for name, vectors in batch.vectors.items():
            keep = [i for i, h in enumerate(batch.hashes[name]) if h not in self._hashes]
            already += [{"path": "", "identity": self._hashes[h]} for h in batch.hashes[name] if h in self._hashes]
            if keep:
                self.add(name, vectors[keep], batch.model_key)
                self._hashes.update({batch.hashes[name][i]: name for i in keep})
                added += len(keep)
        return {"identities": batch.identities, "images": added, "skipped": batch.skipped,
                "several_faces": batch.several_faces, "already_enrolled": already, "gallery_size": len(self)}

    @staticmethod
    def _embed_identity(recognizer: Any, items: list[tuple[Path, str]], skip_bad: bool, skipped: list[dict],
                        kept: list[tuple[Path, str]]) -> tuple[np.ndarray, list[Any]]:
        """One identity's (path, digest) images in one batch, appending the embedded ones to ``kept``; with
        ``skip_bad``, a failing batch is redone image by image and the unreadable / faceless images are appended
        to ``skipped``."""
        try:
            vectors, infos = recognizer.embed_with_info([p for p, _ in items])
            kept += items
            return vectors, infos
        except ValueError:  # NoFaceError and unreadable files are ValueErrors
            if not skip_bad:
                raise
        vectors, infos = [], []
        for path, digest in items:
            try:
                vector, info = recognizer.embed_with_info(path)
            except ValueError as err:
                skipped.append({"path": printable_path(path), "error": str(err)})
                continue
            vectors.append(vector)
            kept.append((path, digest))
            infos += info
        return (np.concatenate(vectors) if vectors else np.zeros((0, recognizer.card.embedding_size))), infos

    # ------------------------------------------------------------------------------------------ disk
    @classmethod
    @contextmanager
    def update(cls, path: str | os.PathLike, model: Any, on_wait: Callable[[str], None] | None = None
               ) -> Iterator[Gallery]:
        """Change the gallery at ``path`` safely beside other writers: under the folder's writer lock, load it
        (or create an empty one for ``model`` if there is none), yield it, and save it if the block succeeds.

        Two updates of one folder (threads or processes) run one after the other, each on the other's result, so
        neither is lost. ``on_wait`` gets a message once if another writer holds the lock.
        """
        folder = Path(path)
        _check_gallery_folder(folder)
        with writer_lock(folder, on_wait=on_wait):
            gallery = cls.load(folder) if (folder / _CURRENT).is_file() else cls.create(model)
            gallery.check_model(model, "changes")
            yield gallery
            gallery.save(folder)

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the gallery to ``path`` (default: where it was loaded from) atomically; see the module doc.

        Raises GalleryConflictError if another writer saved the folder since this gallery was loaded from it (or
        if ``path`` holds another gallery): nothing is written then.
        """
        folder = Path(path) if path is not None else self.path
        if folder is None:
            raise ValueError("save(path): this gallery has no folder yet")
        _check_gallery_folder(folder)
        with writer_lock(folder):
            current = _read_current(folder)
            if current is not None:
                self._check_overwrite(folder, current)
            versions = _versions(folder)
            version = f"v{(int(versions[-1][1:]) + 1) if versions else 1:06d}"
            tmp = folder / f".tmp-{version}-{os.getpid()}-{threading.get_ident()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            self._write_version(tmp)
            os.replace(tmp, folder / version)
            fsync_dir(folder)
            atomic_write_text(folder / _CURRENT, version)
            _prune(folder, keep=(version, current or version))
        self.path, self._base = folder, version
        return folder

    def _check_overwrite(self, folder: Path, current: str) -> None:
        """Refuse a save that would replace a version this gallery did not start from."""
        same = self.path is not None and folder.resolve() == self.path.resolve()
        if not same:
            other = _stored_model_key(folder)
            if other != self.model_key:
                raise UserError(f"{folder} holds a gallery of another model ({other[:16]}...); saving this one "
                                f"({self.model_key[:16]}...) there would replace it: choose another folder")
            raise GalleryConflictError(f"{folder} already holds a gallery ({current}); saving this one there would "
                                       "replace its identities: load that gallery and add to it, or choose another "
                                       "folder")
        if current != self._base:
            raise GalleryConflictError(
                f"the gallery {folder} was saved by another writer ({current}) after this copy was loaded "
                f"({self._base}); saving would drop that writer's identities, so nothing was saved: load it again "
                "and redo the change (marginface enroll and Gallery.update do this under the folder's lock)")

    def _write_version(self, tmp: Path) -> None:
        with open(tmp / _VECTORS, "wb") as handle:
            np.save(handle, self.vectors, allow_pickle=False)
        db = sqlite3.connect(tmp / _DB)
        try:
            db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute("CREATE TABLE identities (row INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, "
                       "images INTEGER NOT NULL, norm REAL NOT NULL)")
            db.execute("CREATE TABLE images (sha256 TEXT PRIMARY KEY, name TEXT NOT NULL)")
            meta = {"format": FORMAT, "model_key": self.model_key, "card": self.card_json, "dim": str(self.dim),
                    "count": str(len(self)), "model_path": self.model_path, "saved": time.strftime("%Y-%m-%dT%H:%M:%S")}
            db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
            db.executemany("INSERT INTO identities VALUES (?, ?, ?, ?)",
                           zip(range(len(self)), self._names, self._images.tolist(), self._norms.tolist()))
            db.executemany("INSERT INTO images VALUES (?, ?)", self._hashes.items())
            db.commit()
        finally:
            db.close()
        fsync_tree(tmp)  # vectors, database and the folder's entries reach the disk before the rename

    @classmethod
    def load(cls, path: str | os.PathLike, version: str | None = None) -> Gallery:
        """Read the gallery saved at ``path`` (its current version, or ``version`` e.g. ``"v000003"``)."""
        folder = Path(path)
        if not (folder / _CURRENT).is_file():
            raise FileNotFoundError(f"{folder} is not a gallery folder (no {folder / _CURRENT}); create one with "
                                    "marginface enroll --gallery DIR ...")
        current = (folder / _CURRENT).read_text().strip()
        version = version or current
        vdir = folder / version
        try:
            gallery = cls._read_version(vdir)
        except (OSError, ValueError, sqlite3.Error, KeyError) as err:
            raise UserError(_damaged_message(folder, version, err)) from err
        gallery.path, gallery._base = folder, current
        return gallery

    @classmethod
    def _read_version(cls, vdir: Path) -> Gallery:
        db_path, vec_path = vdir / _DB, vdir / _VECTORS
        for file in (db_path, vec_path):
            if not file.is_file():
                raise FileNotFoundError(f"{file} is missing")
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise ValueError(f"{db_path} fails SQLite's integrity check")
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            rows = db.execute("SELECT name, images, norm FROM identities ORDER BY row").fetchall()
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            hashes = db.execute("SELECT sha256, name FROM images").fetchall() if "images" in tables else []
        finally:
            db.close()
        if meta.get("format") != FORMAT:
            raise ValueError(f"{db_path} has format {meta.get('format')!r}, expected {FORMAT!r}")
        count, dim = int(meta["count"]), int(meta["dim"])
        if len(rows) != count:
            raise ValueError(f"{db_path} lists {len(rows)} identities but records count {count}")
        vectors = _load_vectors(vec_path, db_path, count, dim)
        _check_contents(vec_path, db_path, vectors, rows)
        gallery = cls(meta["model_key"], dim, meta["card"])
        gallery._vectors = vectors
        gallery.model_path = meta.get("model_path", "")
        gallery._names = [r[0] for r in rows]
        gallery._row = {n: i for i, n in enumerate(gallery._names)}
        gallery._images = np.array([r[1] for r in rows], np.int64)
        gallery._norms = np.array([r[2] for r in rows], np.float64)
        gallery._hashes = dict(hashes)
        return gallery

    def describe(self) -> str:
        card = json.loads(self.card_json or "{}")
        where = f", at {self.path}" if self.path else ""
        return (f"{len(self)} identities ({int(self._images.sum())} images), D={self.dim}, model "
                f"{card.get('backbone', '?')} sha256 {self.model_key[:16]}...{where}")


# ------------------------------------------------------------------------------------------ file helpers
def _is_version(path: Path) -> bool:
    return path.is_dir() and path.name.startswith("v") and path.name[1:].isdigit()


def _versions(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if _is_version(p))


def _stored_model_key(folder: Path) -> str:
    """The model key recorded by the current version of the gallery at ``folder`` ("" if unreadable)."""
    db_path = folder / (folder / _CURRENT).read_text().strip() / _DB
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'model_key'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return ""
    return row[0] if row else ""


def _damaged_message(folder: Path, version: str, err: Exception) -> str:
    older = [v for v in _versions(folder) if v < version]
    fix = (f"the previous save {folder / older[-1]} is intact: load it with Gallery.load({str(folder)!r}, "
           f"version={older[-1]!r}) (`version={older[-1]}`) and save again"
           if older else "no earlier version is kept: restore the folder from a backup or enrol again")
    return f"gallery {folder / version} is damaged: {err}; {fix}"


def _prune(folder: Path, keep: Iterable[str]) -> None:
    """Delete versions not in ``keep`` and temporary folders of interrupted saves (never one whose process is
    still running: it may be a writer that does not take the lock, e.g. an older marginface)."""
    stale = [v for v in _versions(folder) if v not in set(keep)]
    stale += [p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith(".tmp-") and _abandoned(p.name)]
    for name in stale:
        shutil.rmtree(folder / name, ignore_errors=True)


def _abandoned(tmp_name: str) -> bool:
    """Whether ``.tmp-<version>-<pid>[-<thread>]`` was left by this process (its save failed: the caller holds the
    lock, so no save of ours is in progress) or by a process that no longer exists."""
    parts = tmp_name.split("-")
    try:
        pid = int(parts[2])
    except (IndexError, ValueError):
        return False  # not named by a save: leave it
    return pid == os.getpid() or not pid_alive(pid)


def _load_vectors(vec_path: Path, db_path: Path, count: int, dim: int) -> np.ndarray:
    """``vectors.npy`` as (count, dim) float32, its header checked against the SQLite counts and against the file's
    size before anything is allocated (a crafted header asking for terabytes is this error, not a MemoryError)."""
    fmt = np.lib.format
    with open(vec_path, "rb") as handle:
        try:
            version = fmt.read_magic(handle)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read(handle)  # numpy caps the header's own size (max_header_size)
        except ValueError as err:
            raise ValueError(f"{vec_path} is truncated or not a .npy array ({err})") from err
        data_bytes = os.fstat(handle.fileno()).st_size - handle.tell()
        if shape != (count, dim) or dtype != np.float32 or fortran:
            raise ValueError(f"{vec_path} holds {shape} {dtype} but {db_path} lists {count} identities of D={dim}")
        if data_bytes != count * dim * 4:
            raise ValueError(f"{vec_path} is truncated or padded: {data_bytes:,} bytes of data for {count} x {dim} "
                             f"float32 ({count * dim * 4:,} bytes)")
        return np.fromfile(handle, dtype=np.float32, count=count * dim).reshape(count, dim)


#: how far a stored template's norm may be from 1 (float32 rounding of a normalised row is ~1e-7).
NORM_TOLERANCE = 1e-3


def _check_contents(vec_path: Path, db_path: Path, vectors: np.ndarray, rows: list[tuple]) -> None:
    """A loaded version's contents are what save() writes: finite unit templates, distinct non-empty names,
    image counts >= 1 and finite positive sums' norms. Raises ValueError naming the first bad row."""
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (np.abs(norms - 1) > NORM_TOLERANCE))
    if len(bad):
        raise ValueError(f"{vec_path} row {bad[0]} ({rows[bad[0]][0]!r}) has norm {norms[bad[0]]:.6g}, not 1: "
                         f"templates are unit vectors ({len(bad)} bad rows)")
    seen: set[str] = set()
    for i, (name, images, norm) in enumerate(rows):
        if not isinstance(name, str) or not name or name in seen:
            raise ValueError(f"{db_path} row {i}: identity name {name!r} is empty, not text or repeated")
        seen.add(name)
        if isinstance(images, bool) or not isinstance(images, int) or images < 1:
            raise ValueError(f"{db_path} row {i} ({name!r}): image count {images!r} is not an integer >= 1")
        if not isinstance(norm, float | int) or not math.isfinite(norm) or norm <= 0:
            raise ValueError(f"{db_path} row {i} ({name!r}): norm {norm!r} is not a finite positive number")


def _read_current(folder: Path) -> str | None:
    """The version named by ``folder/CURRENT``, or None when there is none yet."""
    try:
        return (folder / _CURRENT).read_text().strip() or None
    except FileNotFoundError:
        return None


def _check_gallery_folder(folder: Path) -> None:
    """Create ``folder`` if needed; refuse a folder holding anything but a gallery's own files (hidden names such as
    the lock, versions, ``CURRENT``): another writer may be between renaming its first version and writing
    ``CURRENT``, so a version folder without ``CURRENT`` is a gallery being born, not a foreign folder."""
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / _CURRENT).is_file():
        return
    own = {_CURRENT, _CURRENT + ".tmp"}  # CURRENT.tmp: the temporary name of earlier releases (now hidden)
    if any(not (p.name.startswith(".") or p.name in own or _is_version(p)) for p in folder.iterdir()):
        raise UserError(f"{folder} exists and is not a gallery folder (no {_CURRENT} file): choose a new or "
                        "empty folder")
