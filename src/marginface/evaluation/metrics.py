"""Verification and identification metrics: pure functions on numpy arrays.

Conventions (every function here follows them; docs/evaluation.md explains the choices):

* A **score** is a similarity: higher means "more likely the same person". A pair is *accepted* (predicted
  same) at threshold ``t`` iff ``score >= t``. For a distance, pass its negative.
* Threshold sweeps sort the scores once and read every operating point from cumulative sums; the candidate
  thresholds are the distinct score values (no grid), so results are exact, not grid-limited.
* Everything is computed in float64; inputs are validated (lengths, NaN/inf, labels) with errors naming
  the offending argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: The FAR targets reported by default (IJB-style 1:1 verification and MegaFace's 1e-6).
DEFAULT_FARS: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


# ---------------------------------------------------------------------------------------------- validation


def _finite_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a (N, D) array, got shape {x.shape}")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise ValueError(f"{name} has NaN/inf in {bad.size} rows (first: {bad[:5].tolist()}); check the model")
    return x


def check_scores(scores: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert: (N,) finite float64 scores and (N,) bool labels.

    Raises:
        ValueError: not 1-D, lengths differ, empty, NaN/inf scores, or labels that are not bool or 0/1.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(issame)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"scores and issame must be 1-D, got shapes {s.shape} and {y.shape}")
    if s.size != y.size:
        raise ValueError(f"scores has {s.size} entries but issame has {y.size}; they must be the same pairs")
    if s.size == 0:
        raise ValueError("scores is empty: need at least one pair")
    bad = np.flatnonzero(~np.isfinite(s))
    if bad.size:
        raise ValueError(f"scores has {bad.size} NaN/inf values (first at {bad[:5].tolist()}); check the embeddings")
    if y.dtype != np.bool_:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("issame must be bool or 0/1 (True = same identity)")
        y = y.astype(bool)
    return s, y


def _need_both_classes(y: np.ndarray) -> tuple[int, int]:
    num_pos = int(y.sum())
    num_neg = int(y.size - num_pos)
    if num_pos == 0 or num_neg == 0:
        raise ValueError(f"need both same and different pairs, got {num_pos} same and {num_neg} different")
    return num_pos, num_neg


# ---------------------------------------------------------------------------------------------- scores


def pair_scores(embeddings1: np.ndarray, embeddings2: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """Similarity of each pair of rows: (N, D), (N, D) -> (N,) float64.

    ``metric="cosine"`` gives the cosine similarity (rows are L2-normalised here, so raw embeddings are fine);
    ``metric="euclidean"`` gives the *negative* Euclidean distance of the rows as given (so higher is still
    more similar; for models trained with a distance loss, e.g. dlib's).

    Raises:
        ValueError: shapes differ, NaN/inf rows, a zero row under cosine, or an unknown metric.
    """
    a = _finite_matrix(embeddings1, "embeddings1")
    b = _finite_matrix(embeddings2, "embeddings2")
    if a.shape != b.shape:
        raise ValueError(f"embeddings1 {a.shape} and embeddings2 {b.shape} must have the same shape")
    if metric == "euclidean":
        return -np.linalg.norm(a - b, axis=1)
    if metric != "cosine":
        raise ValueError(f"unknown metric {metric!r}; use 'cosine' or 'euclidean'")
    for x, name in ((a, "embeddings1"), (b, "embeddings2")):
        zero = np.flatnonzero(np.linalg.norm(x, axis=1) == 0)
        if zero.size:
            raise ValueError(f"{name} has {zero.size} all-zero rows (first: {zero[:5].tolist()}): no direction")
    return np.einsum("nd,nd->n", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ---------------------------------------------------------------------------------------------- sweep


def _operating_points(s_desc: np.ndarray, y_desc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All distinct operating points of scores sorted in descending order.

    Returns ``(values, tp, fp)`` of length ``M + 1`` for ``M`` distinct scores: point 0 accepts nothing
    (``values[0] = +inf``); point ``j`` accepts every pair with ``score >= values[j]``, the ``j``-th largest
    distinct score. ``tp``/``fp`` count the accepted same/different pairs (int64).
    """
    ends = np.flatnonzero(np.r_[s_desc[1:] != s_desc[:-1], True])  # last index of each run of equal scores
    tp = np.cumsum(y_desc, dtype=np.int64)[ends]
    fp = ends + 1 - tp
    return np.r_[np.inf, s_desc[ends]], np.r_[0, tp], np.r_[0, fp]


def _sort_desc(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(-s, kind="stable")
    return s[order], y[order], order


def best_threshold(scores: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    """The accuracy-maximising threshold: ``(threshold, accuracy)``.

    The candidates are every distinct cut of the sorted scores. Among the cuts that reach the best accuracy
    the one accepting the *fewest* pairs wins (the highest threshold: fewest false accepts, the same choice as
    insightface's ``argmax`` over an ascending distance grid). The threshold returned is the midpoint between
    the last accepted and the first rejected distinct score (a margin on both sides), ``+inf`` when the best
    cut accepts nothing and ``-inf`` when it accepts everything.
    """
    s, y = check_scores(scores, issame)
    s_desc, y_desc, _ = _sort_desc(s, y)
    return _best_threshold_sorted(s_desc, y_desc)


def _best_threshold_sorted(s_desc: np.ndarray, y_desc: np.ndarray) -> tuple[float, float]:
    values, tp, fp = _operating_points(s_desc, y_desc)
    num_neg = y_desc.size - int(y_desc.sum())
    accuracy = (tp + num_neg - fp) / y_desc.size
    j = int(np.argmax(accuracy))  # first maximum = highest threshold (see docstring)
    if j == 0:
        return float("inf"), float(accuracy[0])
    if j == values.size - 1:
        return float("-inf"), float(accuracy[j])
    lo, hi = values[j + 1], values[j]
    mid = lo + (hi - lo) / 2
    # for adjacent floats the midpoint rounds onto one of them; hi still accepts exactly the same pairs
    return float(mid if lo < mid <= hi else hi), float(accuracy[j])


# ---------------------------------------------------------------------------------------------- k-fold


@dataclass(frozen=True)
class KFoldResult:
    """Result of k-fold verification accuracy.

    Attributes:
        mean: mean test accuracy over the folds (fraction in [0, 1]).
        std: population standard deviation (ddof=0, as insightface and the LFW literature report).
        accuracies: (k,) test accuracy of each fold.
        thresholds: (k,) threshold chosen on the other k-1 folds (accept iff score >= threshold).
        fold_ids: (N,) fold of each pair.
    """

    mean: float
    std: float
    accuracies: np.ndarray
    thresholds: np.ndarray
    fold_ids: np.ndarray


def contiguous_folds(num_pairs: int, num_folds: int = 10) -> np.ndarray:
    """Fold ids 0..k-1 of contiguous, unshuffled folds: (N,) int64.

    The first ``N % k`` folds get one extra pair; this is ``sklearn.model_selection.KFold(k, shuffle=False)``,
    the split insightface's ``verification.py`` uses for ``.bin`` sets.
    """
    if not 2 <= num_folds <= num_pairs:
        raise ValueError(f"num_folds must be in [2, {num_pairs}] (number of pairs), got {num_folds}")
    sizes = np.full(num_folds, num_pairs // num_folds)
    sizes[: num_pairs % num_folds] += 1
    return np.repeat(np.arange(num_folds, dtype=np.int64), sizes)


def _fold_ids(folds: int | np.ndarray, n: int) -> np.ndarray:
    if isinstance(folds, (int, np.integer)):
        return contiguous_folds(n, int(folds))
    ids = np.asarray(folds)
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"folds must be an int or (N,) integer fold ids with N={n}, got {ids.dtype} {ids.shape}")
    if np.unique(ids).size < 2:
        raise ValueError("folds must hold at least two distinct fold ids")
    return ids.astype(np.int64)


def kfold_accuracy(scores: np.ndarray, issame: np.ndarray, folds: int | np.ndarray = 10) -> KFoldResult:
    """k-fold verification accuracy: for each fold, the threshold is chosen on the other folds.

    Args:
        scores: (N,) similarities.
        issame: (N,) bool, True for same-identity pairs.
        folds: number of contiguous folds (``.bin`` protocol), or (N,) explicit fold ids (e.g. ``pairs.txt``'s).

    The threshold of each fold is :func:`best_threshold` on the remaining pairs; the fold's accuracy is the
    fraction of its pairs with ``(score >= threshold) == issame``. Scores are sorted once; each fold reuses
    that order.
    """
    s, y = check_scores(scores, issame)
    ids = _fold_ids(folds, s.size)
    s_desc, y_desc, order = _sort_desc(s, y)
    ids_desc = ids[order]
    labels = np.unique(ids)
    accuracies = np.empty(labels.size)
    thresholds = np.empty(labels.size)
    for k, fold in enumerate(labels):  # a loop over the (ten) folds, not over thresholds
        train = ids_desc != fold
        thresholds[k], _ = _best_threshold_sorted(s_desc[train], y_desc[train])
        test = ids == fold
        accuracies[k] = np.mean((s[test] >= thresholds[k]) == y[test])
    return KFoldResult(float(accuracies.mean()), float(accuracies.std()), accuracies, thresholds, ids)


# ---------------------------------------------------------------------------------------------- ROC family


def roc(scores: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve at every distinct threshold: ``(fpr, tpr, thresholds)``, each (M + 1,).

    ``thresholds`` descend from ``+inf`` (accept nothing: FPR = TPR = 0) through every distinct score (accept
    iff ``score >= threshold``) down to the minimum (accept everything: FPR = TPR = 1). This is
    ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.
    """
    s, y = check_scores(scores, issame)
    num_pos, num_neg = _need_both_classes(y)
    s_desc, y_desc, _ = _sort_desc(s, y)
    values, tp, fp = _operating_points(s_desc, y_desc)
    return fp / num_neg, tp / num_pos, values


def auc(scores: np.ndarray, issame: np.ndarray) -> float:
    """Area under the ROC curve (trapezoidal over all distinct thresholds).

    Equals P(score of a same pair > score of a different pair) + 0.5 P(equal) — tied scores count half.
    """
    fpr, tpr, _ = roc(scores, issame)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def eer(scores: np.ndarray, issame: np.ndarray) -> float:
    """Equal error rate: where the false-accept rate equals the false-reject rate (1 - TPR).

    The ROC is taken as the piecewise-linear curve through its operating points; the EER is where that curve
    crosses FPR = FNR, linearly interpolated on the segment where ``FNR - FPR`` changes sign.
    """
    fpr, tpr, _ = roc(scores, issame)
    gap = (1 - tpr) - fpr  # starts at 1 (accept nothing), ends at -1 (accept all)
    j = int(np.argmax(gap <= 0))
    if gap[j] == 0:
        return float(fpr[j])
    a = gap[j - 1] / (gap[j - 1] - gap[j])
    return float(fpr[j - 1] + a * (fpr[j] - fpr[j - 1]))


@dataclass(frozen=True)
class TarAtFar:
    """TAR at fixed FAR targets (all arrays aligned with ``far``).

    Attributes:
        far: (F,) FAR targets.
        tar: (F,) true-accept rate at the operating point; NaN when the target is below 1/num_negatives.
        threshold: (F,) threshold of that point (accept iff score >= threshold); NaN when undefined.
        achieved_far: (F,) the FAR actually reached there (<= target); NaN when undefined.
        num_negatives: number of different-identity pairs (the resolution of FAR is 1/num_negatives).
    """

    far: np.ndarray
    tar: np.ndarray
    threshold: np.ndarray
    achieved_far: np.ndarray
    num_negatives: int


def tar_at_far(
    scores: np.ndarray, issame: np.ndarray, far: float | Sequence[float] = DEFAULT_FARS
) -> TarAtFar:
    """True-accept rate at each false-accept-rate target, without interpolation.

    For each target the operating point is the one with the highest TAR among the thresholds whose measured
    FAR is <= the target (exactly: ``false_accepts <= target * num_negatives``). A target below
    ``1 / num_negatives`` cannot be measured on this many different pairs (any threshold that accepts no
    different pair "achieves" it), so its TAR is NaN rather than an invented value.
    """
    s, y = check_scores(scores, issame)
    num_pos, num_neg = _need_both_classes(y)
    targets = np.atleast_1d(np.asarray(far, dtype=np.float64))
    if not ((targets > 0) & (targets <= 1)).all():
        raise ValueError(f"FAR targets must be in (0, 1], got {targets.tolist()}")
    s_desc, y_desc, _ = _sort_desc(s, y)
    values, tp, fp = _operating_points(s_desc, y_desc)
    allowed = np.floor(targets * num_neg + 1e-9)  # tolerance: 1e-3 * 3000 must allow 3, not 2.9999...
    j = np.searchsorted(fp, allowed, side="right") - 1  # fp is non-decreasing: last point within budget
    defined = allowed >= 1
    nan = np.full(targets.shape, np.nan)
    return TarAtFar(
        targets,
        np.where(defined, tp[j] / num_pos, nan),
        np.where(defined, values[j], nan),
        np.where(defined, fp[j] / num_neg, nan),
        num_neg,
    )


# ---------------------------------------------------------------------------------------------- identification


def match_ranks(similarity: np.ndarray, probe_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """1-based rank of each probe's first correct match in a dense similarity matrix.

    Args:
        similarity: (P, G) probe-gallery similarities.
        probe_labels: (P,) identity of each probe.
        gallery_labels: (G,) identity of each gallery entry (distractors: any label no probe has, e.g. -1).

    Returns:
        (P,) float64 ranks: 1 + the number of *wrong-identity* gallery entries scoring >= the best correct
        one (ties are counted against the probe); ``inf`` for a probe whose identity is not in the gallery.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    p, g = np.asarray(probe_labels), np.asarray(gallery_labels)
    if sim.ndim != 2 or sim.shape != (p.size, g.size):
        raise ValueError(f"similarity must be (P, G) = ({p.size}, {g.size}), got {sim.shape}")
    if not np.isfinite(sim).all():
        raise ValueError("similarity has NaN/inf values; check the embeddings")
    mate = p[:, None] == g[None, :]
    best = np.where(mate, sim, -np.inf).max(axis=1)
    ranks = 1.0 + np.sum(~mate & (sim >= best[:, None]), axis=1)
    return np.where(mate.any(axis=1), ranks, np.inf)


def ranks_from_topk(scores: np.ndarray, result_labels: np.ndarray, probe_labels: np.ndarray) -> np.ndarray:
    """Ranks of the first correct match from a top-k search, with :func:`match_ranks`' tie rule.

    Args:
        scores: (P, k) similarities of each probe's results, best first.
        result_labels: (P, k) identity of each result.
        probe_labels: (P,) identity of each probe.

    Returns:
        (P,) float64: 1 + wrong-identity results scoring >= the best correct one; ``inf`` if no correct result
        is among the k (the true rank is then > k). With k = gallery size this equals :func:`match_ranks`.
    """
    s, lab, p = np.asarray(scores, np.float64), np.asarray(result_labels), np.asarray(probe_labels)
    if s.shape != lab.shape or s.ndim != 2 or p.shape != (s.shape[0],):
        raise ValueError(f"scores {s.shape} and result_labels {lab.shape} must be (P, k), probe_labels (P,)")
    mate = lab == p[:, None]
    best = np.where(mate, s, -np.inf).max(axis=1, initial=-np.inf)
    ranks = 1.0 + np.sum(~mate & (s >= best[:, None]), axis=1)
    return np.where(mate.any(axis=1), ranks, np.inf)


def cmc(ranks: np.ndarray, max_rank: int = 10) -> np.ndarray:
    """Cumulative match characteristic: (max_rank,) fraction of probes with rank <= k, for k = 1..max_rank."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {r.shape}")
    if np.isnan(r).any() or (r < 1).any():
        raise ValueError("ranks must be >= 1 (1-based) or inf, without NaN")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    counts = np.bincount(np.minimum(r, max_rank + 1).astype(np.int64), minlength=max_rank + 2)
    return np.cumsum(counts[1 : max_rank + 1]) / r.size


def rank_k_accuracy(ranks: np.ndarray, k: int = 1) -> float:
    """Fraction of probes whose correct match is within the top ``k`` (rank-1 identification rate for k=1)."""
    return float(cmc(ranks, k)[-1])
