"""Identity centroids, leave-one-out outlier distances, calibrated thresholds, duplicates and overlap.

All distances are cosine distances ``1 - cos`` between L2-normalised vectors; a centroid is the normalised mean
of an identity's normalised embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _normalise(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError(f"{name} must be a finite (N, D) array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{name} has all-zero rows; check the embedder")
    return x / norms


def labels_from_names(names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """(N,) int labels and the identity names (index = label) from ``identity/file`` image names."""
    identities = [n.replace("\\", "/").rsplit("/", 1)[0] if "/" in n else "" for n in names]
    if "" in identities:
        raise ValueError("image names must be identity/file (the folder part is the identity)")
    classes = sorted(set(identities))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[i] for i in identities], dtype=np.int64), classes


def centroids(embeddings: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """(C, D) float64 unit centroids (normalised mean of normalised rows) of ``(N, D)`` by ``(N,)`` labels."""
    x = _normalise(embeddings, "embeddings")
    labels = np.asarray(labels, dtype=np.int64)
    c = int(labels.max()) + 1 if num_classes is None else num_classes
    sums = np.zeros((c, x.shape[1]))
    np.add.at(sums, labels, x)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return np.divide(sums, norms, out=np.full_like(sums, np.nan), where=norms > 0)


def leave_one_out_distances(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) cosine distance of each image to its identity's centroid computed *without* it (NaN if alone).

    Leave-one-out so that an outlier cannot pull the centroid towards itself (matters for small identities).
    """
    x = _normalise(embeddings, "embeddings")
    labels = np.asarray(labels, dtype=np.int64)
    sums = np.zeros((int(labels.max()) + 1, x.shape[1]))
    np.add.at(sums, labels, x)
    rest = sums[labels] - x
    norms = np.linalg.norm(rest, axis=1)
    cos = np.einsum("nd,nd->n", x, rest) / np.where(norms > 1e-12, norms, 1.0)
    counts = np.bincount(labels)[labels]
    return np.where((counts > 1) & (norms > 1e-12), 1.0 - cos, np.nan)


def threshold_outliers(distances: np.ndarray, threshold: float) -> np.ndarray:
    """(N,) bool: leave-one-out distance above an absolute ``threshold``."""
    return np.nan_to_num(np.asarray(distances), nan=-np.inf) > threshold


def robust_outliers(distances: np.ndarray, labels: np.ndarray, k: float = 3.0, min_images: int = 4,
                    floor: float = 0.0) -> np.ndarray:
    """(N,) bool: distance > median + k * 1.4826 * MAD of its own identity (and > ``floor``).

    Per-identity, so an identity whose photos are all hard (profile, old) is judged against itself. Identities
    with fewer than ``min_images`` images are never flagged (no spread to estimate).
    """
    d = np.asarray(distances, dtype=np.float64)
    labels = np.asarray(labels)
    flags = np.zeros(d.shape, dtype=bool)
    for label in np.unique(labels):
        rows = np.flatnonzero((labels == label) & np.isfinite(d))
        if rows.size < min_images:
            continue
        med = np.median(d[rows])
        mad = 1.4826 * np.median(np.abs(d[rows] - med))
        flags[rows] = (d[rows] > med + k * max(mad, 1e-6)) & (d[rows] > floor)
    return flags


def equal_error_threshold(same: np.ndarray, different: np.ndarray) -> float:
    """The distance where P(same > t) equals P(different <= t): the calibrated cut between two samples."""
    same, different = np.sort(np.asarray(same, float)), np.sort(np.asarray(different, float))
    if same.size == 0 or different.size == 0:
        raise ValueError("calibration needs both same-identity and different-identity distances")
    grid = np.unique(np.concatenate([same, different]))
    miss = 1.0 - np.searchsorted(same, grid, side="right") / same.size
    false = np.searchsorted(different, grid, side="right") / different.size
    i = int(np.argmin(np.abs(miss - false)))
    # midway to the next observed value, so a strict ``< threshold`` keeps every distance at or below grid[i]
    return float((grid[i] + grid[i + 1]) / 2) if i + 1 < grid.size else float(grid[i])


def min_error_threshold(same: np.ndarray, different: np.ndarray) -> float:
    """The distance minimising P(same > t) + P(different <= t), mid-way through its best interval.

    Preferred to the equal-error cut for cleaning because both samples are contaminated in real data: when x% of
    the "different" distances are really duplicates (as close as same-identity ones), the equal-error cut must put
    x% of the genuine same-identity distances above it; the minimum total error does not move for them.
    """
    same, different = np.sort(np.asarray(same, float)), np.sort(np.asarray(different, float))
    if same.size == 0 or different.size == 0:
        raise ValueError("calibration needs both same-identity and different-identity distances")
    grid = np.unique(np.concatenate([same, different]))
    error = (1.0 - np.searchsorted(same, grid, side="right") / same.size
             + np.searchsorted(different, grid, side="right") / different.size)
    best = np.flatnonzero(np.isclose(error, error.min(), rtol=0, atol=1e-12))
    breaks = np.flatnonzero(np.diff(best) != 1)
    i, j = int(best[0]), int(best[breaks[0]] if breaks.size else best[-1])  # the first run of best grid points
    # t anywhere in [grid[i], grid[j + 1]) gives this error: take the middle of that interval
    return float((grid[i] + grid[j + 1]) / 2) if j + 1 < grid.size else float(grid[i])


@dataclass(frozen=True)
class Calibration:
    """Same-identity (split-half) vs different-identity (nearest other centroid) centroid distances."""

    same: np.ndarray
    different: np.ndarray
    threshold: float

    def summary(self) -> dict:
        q = (0.01, 0.05, 0.5, 0.95, 0.99)
        return {"threshold": self.threshold,
                "same": {"n": int(self.same.size), **{f"q{int(p * 100)}": float(np.quantile(self.same, p))
                                                                   for p in q}},
                "different": {"n": int(self.different.size),
                                      **{f"q{int(p * 100)}": float(np.quantile(self.different, p)) for p in q}},
                "same_above_threshold": float((self.same > self.threshold).mean()),
                "different_below_threshold": float((self.different <= self.threshold).mean())}


def split_half_distances(embeddings: np.ndarray, labels: np.ndarray, min_images: int = 4,
                         seed: int = 0) -> np.ndarray:
    """(K,) centroid distance between two random halves of each identity with >= ``min_images`` images."""
    x = _normalise(embeddings, "embeddings")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out = []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        if rows.size < min_images:
            continue
        a, b = x[rows[: rows.size // 2]].sum(0), x[rows[rows.size // 2:]].sum(0)
        out.append(1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return np.array(out)


def holdout_distances(embeddings: np.ndarray, labels: np.ndarray, holdout: int = 1, min_rest: int = 3,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Small-sample calibration, for a test set whose identities have only ``holdout`` images.

    For each identity with >= ``holdout + min_rest`` images, ``holdout`` random images are held out: returns
    ``(same, different)``, both (K,): the distance from the held-out images' centroid to the centroid of the rest
    of its identity, and to the nearest *other* identity's full centroid.
    """
    x = _normalise(embeddings, "embeddings")
    labels = np.asarray(labels, dtype=np.int64)
    cents = centroids(x, labels)
    rng = np.random.default_rng(seed)
    same, different = [], []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        if rows.size < holdout + min_rest:
            continue
        held = x[rows[:holdout]].sum(0)
        held /= np.linalg.norm(held)
        rest = x[rows[holdout:]].sum(0)
        same.append(1.0 - held @ rest / np.linalg.norm(rest))
        sim = cents @ held
        sim[label] = -np.inf
        different.append(1.0 - np.nanmax(sim))
    return np.array(same), np.array(different)


def nearest_other_distances(cents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For (C, D) unit centroids: (C,) distance to the nearest *other* centroid and (C,) its index."""
    sim = cents @ cents.T
    np.fill_diagonal(sim, -np.inf)
    nearest = np.argmax(sim, axis=1)
    return 1.0 - sim[np.arange(len(cents)), nearest], nearest


def calibrate(sets: Sequence[tuple[np.ndarray, np.ndarray]], min_images: int = 4, seed: int = 0,
              holdout: int | None = None) -> Calibration:
    """Calibrate a centroid-distance threshold from ``(embeddings, labels)`` sets (each set on its own).

    ``holdout=None``: split-half centroids vs nearest other centroid (two full identities, e.g. duplicates);
    ``holdout=k``: k images vs the rest (:func:`holdout_distances`; a test set of k-image identities).
    The threshold is :func:`min_error_threshold` of the pooled distances.
    """
    same, different = [], []
    for emb, lab in sets:
        if holdout is None:
            same.append(split_half_distances(emb, lab, min_images, seed))
            different.append(nearest_other_distances(centroids(emb, lab))[0])
        else:
            s, d = holdout_distances(emb, lab, holdout, max(min_images - holdout, 1), seed)
            same.append(s)
            different.append(d)
    same_all, diff_all = np.concatenate(same), np.concatenate(different)
    return Calibration(same_all, diff_all, min_error_threshold(same_all, diff_all))


def duplicate_pairs(cents: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Identity pairs ``(a, b, distance)`` with a < b whose centroids are closer than ``threshold``."""
    sim = cents @ cents.T
    a, b = np.nonzero(np.triu(1.0 - sim < threshold, k=1))
    return sorted(((int(i), int(j), float(1.0 - sim[i, j])) for i, j in zip(a, b)), key=lambda t: t[2])


def merge_groups(pairs: Sequence[tuple[int, int, float]], counts: np.ndarray) -> dict[int, int]:
    """Union-find over duplicate pairs: each merged label -> its group's representative (most images)."""
    parent: dict[int, int] = {}

    def find(i: int) -> int:
        while parent.setdefault(i, i) != i:
            i = parent[i]
        return i

    for a, b, _ in pairs:
        parent[find(a)] = find(b)
    groups: dict[int, list[int]] = {}
    for i in list(parent):
        groups.setdefault(find(i), []).append(i)
    merge = {}
    for members in groups.values():
        rep = max(members, key=lambda m: (counts[m], -m))
        merge.update({m: rep for m in members if m != rep})
    return merge


def overlap(train_cents: np.ndarray, test_cents: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Train identities whose centroid is within ``threshold`` of a test centroid: ``(train, nearest test, d)``."""
    sim = train_cents @ test_cents.T
    nearest = np.argmax(sim, axis=1)
    dist = 1.0 - sim[np.arange(len(train_cents)), nearest]
    return sorted(((int(i), int(nearest[i]), float(dist[i])) for i in np.flatnonzero(dist < threshold)),
                  key=lambda t: t[2])


def inject_label_noise(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Swap the labels of ``fraction`` of the images in pairs of different identities: (noisy labels, (N,) mask)."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(labels.size)[: int(round(fraction * labels.size)) // 2 * 2]
    noisy, mask = labels.copy(), np.zeros(labels.size, dtype=bool)
    for i, j in chosen.reshape(-1, 2):
        if labels[i] != labels[j]:
            noisy[i], noisy[j] = labels[j], labels[i]
            mask[[i, j]] = True
    return noisy, mask


def precision_recall(flags: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Precision and recall of (N,) bool ``flags`` against (N,) bool ``truth``."""
    tp = int((flags & truth).sum())
    return tp / max(int(flags.sum()), 1), tp / max(int(truth.sum()), 1)
