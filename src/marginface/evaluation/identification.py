"""1:N identification on faiss: a labelled gallery plus distractors, probes ranked by cosine similarity.

The index stores L2-normalised float32 rows and searches by inner product, so scores are cosines.
``kind="flat"`` (default) is exact (``IndexFlatIP``); ``"ivf"`` (``IndexIVFFlat``, ``nlist`` cells, ``nprobe``
visited) and ``"hnsw"`` (``IndexHNSWFlat``) are approximate and meant for galleries too large to scan.

Labels: gallery identities are integers >= 0, distractors are -1; probe identities are integers >= 0.
faiss is an optional extra (``pip install marginface[search]``) imported only here, when used.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
from tqdm import tqdm

from marginface.evaluation import metrics

DISTRACTOR = -1
_EMPTY = -2  # label of an empty result slot (faiss id -1); never equal to a probe label


def _faiss():  # noqa: ANN202 (module type)
    try:
        import faiss
    except ImportError as err:
        raise ImportError(
            "identification needs faiss: pip install marginface[search] (installs faiss-cpu)"
        ) from err
    return faiss


def normalise_rows(x: np.ndarray, name: str) -> np.ndarray:
    """(N, D) -> (N, D) float32, C-contiguous, unit rows; NaN/inf or all-zero rows are a ValueError."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be (N, D), got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    bad = np.flatnonzero(~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0))
    if bad.size:
        raise ValueError(f"{name} has {bad.size} NaN/inf or all-zero rows (first: {bad[:5].tolist()})")
    return x / norms


class GalleryIndex:
    """Labelled, L2-normalised embeddings searchable by cosine similarity.

    Args:
        dim: embedding size D.
        kind: ``"flat"`` (exact), ``"ivf"`` or ``"hnsw"`` (approximate).
        nlist: IVF cells (needs at least ``nlist`` training rows; faiss recommends ~39x that).
        nprobe: IVF cells visited per query (recall against speed).
        hnsw_m: HNSW neighbours per node.
        ef_search: HNSW search breadth (raised to ``k`` when a search asks for more results).
    """

    def __init__(self, dim: int, kind: str = "flat", *, nlist: int = 1024, nprobe: int = 32,
                 hnsw_m: int = 32, ef_search: int = 128) -> None:
        faiss = _faiss()
        self.dim, self.kind, self.nprobe, self.ef_search = dim, kind, nprobe, ef_search
        if kind == "flat":
            self.index = faiss.IndexFlatIP(dim)
        elif kind == "ivf":
            self._quantizer = faiss.IndexFlatIP(dim)  # kept referenced: the IVF index does not own it
            self.index = faiss.IndexIVFFlat(self._quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        elif kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        else:
            raise ValueError(f"unknown index kind {kind!r}; use 'flat', 'ivf' or 'hnsw'")
        self._labels: list[np.ndarray] = []

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 label of each stored row, in insertion order."""
        if len(self._labels) > 1:
            self._labels = [np.concatenate(self._labels)]
        return self._labels[0] if self._labels else np.zeros(0, np.int64)

    def train(self, sample: np.ndarray) -> None:
        """Train the IVF coarse quantiser on (S, D) sample rows (no-op for flat and HNSW)."""
        if self.index.is_trained:
            return
        x = normalise_rows(sample, "training sample")
        if x.shape[0] < self.index.nlist:
            raise ValueError(f"IVF with nlist={self.index.nlist} needs at least that many training rows, "
                             f"got {x.shape[0]}; lower nlist or pass more rows")
        self.index.train(x)

    def add(self, embeddings: np.ndarray, labels: np.ndarray | int) -> None:
        """Add (N, D) rows with (N,) labels (or one label for all, e.g. ``DISTRACTOR``)."""
        x = normalise_rows(embeddings, "embeddings")
        if x.shape[1] != self.dim:
            raise ValueError(f"embeddings have D={x.shape[1]}, the index was built for D={self.dim}")
        lab = np.broadcast_to(np.asarray(labels, dtype=np.int64), (x.shape[0],)).copy()
        if (lab < DISTRACTOR).any():
            raise ValueError("labels must be >= 0 (identities) or -1 (distractors)")
        if not self.index.is_trained:
            self.train(x)
        self.index.add(x)
        self._labels.append(lab)

    def search(self, queries: np.ndarray, k: int, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of (P, D) queries: ``(scores (P, k) float32 cosines, labels (P, k) int64)``, best first.

        Empty slots (fewer than ``k`` rows reachable) get score ``-inf`` and label -2.
        """
        q = normalise_rows(queries, "queries")
        k = min(k, len(self))
        if self.kind == "ivf":
            self.index.nprobe = self.nprobe
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.ef_search, k)
        scores, ids = [], []
        for start in tqdm(range(0, q.shape[0], batch_size), desc=f"search ({self.kind})", unit="batch"):
            s, i = self.index.search(q[start : start + batch_size], k)
            scores.append(s)
            ids.append(i)
        s, i = np.concatenate(scores), np.concatenate(ids)
        labels = np.where(i >= 0, self.labels[np.maximum(i, 0)], _EMPTY)
        return np.where(i >= 0, s, -np.inf).astype(np.float32), labels


def _chunks(distractors: np.ndarray | Iterable[np.ndarray] | None) -> Iterator[np.ndarray]:
    if distractors is None:
        return iter(())
    if isinstance(distractors, np.ndarray):
        return iter((distractors,))
    return iter(distractors)


def build_index(
    gallery: np.ndarray, gallery_labels: np.ndarray,
    distractors: np.ndarray | Iterable[np.ndarray] | None = None, kind: str = "flat", **index_options: int,
) -> GalleryIndex:
    """An index of the (G, D) gallery with (G,) labels plus distractors (one array, or chunks of rows).

    Passing the distractors as an iterable of chunks keeps only the index's copy in memory (1M x 512 float32
    is 2 GiB). IVF is trained on the gallery plus the first distractor chunk.
    """
    index = GalleryIndex(np.asarray(gallery).shape[1], kind, **index_options)
    chunks = _chunks(distractors)
    first = next(chunks, None)
    if kind == "ivf":
        sample = gallery if first is None else np.concatenate([np.asarray(gallery), np.asarray(first)])
        index.train(sample)
    labels = np.asarray(gallery_labels)
    if labels.shape != (np.asarray(gallery).shape[0],) or (labels < 0).any():
        raise ValueError("gallery_labels must be (G,) identities >= 0, one per gallery row")
    index.add(gallery, labels)
    for chunk in tqdm(chain([] if first is None else [first], chunks), desc="add distractors", unit="chunk"):
        index.add(chunk, DISTRACTOR)
    return index


@dataclass(frozen=True)
class IdentificationResult:
    """Closed-set identification of probes against an index.

    Attributes:
        ranks: (P,) 1-based rank of each probe's first correct match (``inf``: not within the searched top k).
        cmc: (max_rank,) fraction of probes with rank <= k, k = 1..max_rank.
        ms_per_probe: search wall time per probe, milliseconds.
    """

    ranks: np.ndarray
    cmc: np.ndarray
    ms_per_probe: float

    @property
    def rank1(self) -> float:
        return float(self.cmc[0])


def _check_probe_labels(probe_labels: np.ndarray, num_probes: int) -> np.ndarray:
    labels = np.asarray(probe_labels)
    if labels.shape != (num_probes,) or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise ValueError(f"probe_labels must be ({num_probes},) integer identities >= 0")
    return labels.astype(np.int64)


def identify(
    index: GalleryIndex, probes: np.ndarray, probe_labels: np.ndarray, max_rank: int = 10
) -> IdentificationResult:
    """Rank-k identification of (P, D) probes with (P,) identities: CMC up to ``max_rank``.

    Ties between a correct and a wrong result count against the probe (see ``metrics.match_ranks``).
    """
    labels = _check_probe_labels(probe_labels, np.asarray(probes).shape[0])
    start = time.perf_counter()
    scores, result_labels = index.search(probes, max_rank)
    ms = 1000 * (time.perf_counter() - start) / max(len(labels), 1)
    ranks = metrics.ranks_from_topk(scores, result_labels, labels)
    return IdentificationResult(ranks, metrics.cmc(ranks, max_rank), ms)


def _genuine_scores(gallery: np.ndarray, gallery_labels: np.ndarray, probes: np.ndarray,
                    probe_labels: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """float32 cosines of every (probe, same-identity gallery row) pair, probe-major order."""
    out = []
    for start in range(0, probes.shape[0], batch_size):
        sim = probes[start : start + batch_size] @ gallery.T
        out.append(sim[probe_labels[start : start + batch_size, None] == gallery_labels[None, :]])
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def verification_with_distractors(
    index: GalleryIndex, gallery: np.ndarray, gallery_labels: np.ndarray, probes: np.ndarray,
    probe_labels: np.ndarray, far: float | Sequence[float] = 1e-6, max_k: int = 100_000,
    allow_approximate: bool = False,
) -> metrics.TarAtFar:
    """MegaFace-style 1:1 verification: TAR at FAR with every probe x index row as a pair.

    Genuine pairs: each probe with each gallery row of its identity (``gallery``/``gallery_labels`` must be the
    rows added to ``index`` as identities). Impostor pairs: each probe with every other row of the index (other
    identities and all distractors), i.e. ``P * N - genuine`` pairs, far too many to materialise. The
    threshold only depends on the ``M + 1`` highest impostor scores (``M = floor(FAR * impostors)``), and any
    one probe contributes at most ``M + 1`` of them, so a top-(M + 1 + mates) search per probe finds them
    exactly (with ``kind="flat"``). The rule is :func:`metrics.tar_at_far`'s: the highest TAR whose false
    accepts are <= FAR x impostors; targets below 1/impostors are NaN.

    An approximate index (IVF/HNSW) misses some of the highest impostors, which lowers the threshold and
    *overstates* TAR; it is refused unless ``allow_approximate=True``.
    """
    if index.kind != "flat" and not allow_approximate:
        raise ValueError(f"TAR@FAR among distractors needs the exact 'flat' index; a {index.kind!r} index misses "
                         "impostors and overstates TAR (pass allow_approximate=True to accept that)")
    g = normalise_rows(gallery, "gallery")
    q = normalise_rows(probes, "probes")
    g_labels = np.asarray(gallery_labels, dtype=np.int64)
    p_labels = _check_probe_labels(probe_labels, q.shape[0])
    targets = np.atleast_1d(np.asarray(far, dtype=np.float64))
    genuine = _genuine_scores(g, g_labels, q, p_labels)
    if genuine.size == 0:
        raise ValueError("no probe has a gallery row of its identity: no genuine pairs")
    num_neg = q.shape[0] * len(index) - genuine.size
    allowed = np.floor(targets * num_neg + 1e-9).astype(np.int64)
    defined = allowed >= 1
    most_mates = int(np.unique(g_labels, return_counts=True)[1].max(initial=0))  # mates any probe can have
    k = min(int(allowed[defined].max(initial=0)) + 1 + most_mates, len(index))
    if k > max_k:
        raise ValueError(f"FAR {targets.max():g} needs the top {k} results per probe (> max_k={max_k}); "
                         "use smaller FAR targets or metrics.tar_at_far on dense scores")
    scores, labels = index.search(q, k)
    impostor = np.sort(scores[(labels != p_labels[:, None]) & (labels != _EMPTY)])[::-1]
    tar, threshold, achieved = (np.full(targets.shape, np.nan) for _ in range(3))
    for i in np.flatnonzero(defined):  # a handful of FAR targets
        # accept iff score > the (M+1)-th highest impostor score: at most M false accepts, the most TAR
        cut = impostor[allowed[i]] if allowed[i] < impostor.size else -np.inf
        tar[i] = np.mean(genuine > cut)
        achieved[i] = np.sum(impostor > cut) / num_neg
        threshold[i] = np.nextafter(np.float32(cut), np.float32(np.inf))  # as ">=" on float32 scores
    return metrics.TarAtFar(targets, tar, threshold, achieved, int(num_neg))


@dataclass(frozen=True)
class MegaFaceReport:
    """Rank-k identification among distractors plus TAR at FAR (MegaFace challenge 1 style).

    Attributes:
        num_gallery / num_distractors / num_probes: sizes.
        identification: ranks and CMC of the probes.
        verification: TAR at the FAR targets (probe x index pairs); None for an approximate index.
        build_seconds: time to build the index (adding all rows; IVF training included).
    """

    num_gallery: int
    num_distractors: int
    num_probes: int
    identification: IdentificationResult
    verification: metrics.TarAtFar | None
    build_seconds: float

    def summary(self) -> str:
        if self.verification is None:
            tars = "TAR@FAR not computed (approximate index)"
        else:
            tars = ", ".join(
                f"TAR@FAR={f:.0e} " + (f"{100 * t:.2f}%" if np.isfinite(t) else "n/a")
                for f, t in zip(self.verification.far, self.verification.tar)
            )
        return (f"{self.num_probes} probes, gallery {self.num_gallery} + {self.num_distractors} distractors: "
                f"rank-1 {100 * self.identification.rank1:.2f}%, {tars}")


def megaface_report(
    gallery: np.ndarray, gallery_labels: np.ndarray, probes: np.ndarray, probe_labels: np.ndarray,
    distractors: np.ndarray | Iterable[np.ndarray] | None, *, kind: str = "flat",
    far: float | Sequence[float] = 1e-6, max_rank: int = 10, **index_options: int,
) -> MegaFaceReport:
    """Build the index (gallery + distractors), then rank-k identification and TAR@FAR of the probes.

    TAR@FAR is only computed with the exact ``flat`` index (see :func:`verification_with_distractors`).
    """
    start = time.perf_counter()
    index = build_index(gallery, gallery_labels, distractors, kind, **index_options)
    build_seconds = time.perf_counter() - start
    result = identify(index, probes, probe_labels, max_rank)
    verification = (verification_with_distractors(index, gallery, gallery_labels, probes, probe_labels, far)
                    if kind == "flat" else None)
    num_gallery = int(np.asarray(gallery).shape[0])
    return MegaFaceReport(num_gallery, len(index) - num_gallery, int(np.asarray(probes).shape[0]), result,
                          verification, build_seconds)
