"""Metrics against naive float64 references (a Python loop over thresholds, folds, pairs) and hand cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from marginface.evaluation import metrics

# ------------------------------------------------------------------------------------ naive references


def naive_counts(s: np.ndarray, y: np.ndarray, t: float) -> tuple[int, int]:
    """(true accepts, false accepts) at threshold t, by direct counting."""
    accepted = s >= t
    return int(np.sum(accepted & y)), int(np.sum(accepted & ~y))


def naive_thresholds(s: np.ndarray) -> list[float]:
    """+inf then every distinct score, descending."""
    return [math.inf] + sorted(set(s.tolist()), reverse=True)


def naive_best_threshold(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    cuts = naive_thresholds(s)
    num_neg = int(len(y) - sum(y))
    best_k, best_acc = 0, -1.0
    for k, t in enumerate(cuts):
        tp, fp = naive_counts(s, y, t)
        acc = (tp + num_neg - fp) / len(y)
        if acc > best_acc:  # strict: the first (highest) threshold wins ties
            best_k, best_acc = k, acc
    if best_k == 0:
        return math.inf, best_acc
    if best_k == len(cuts) - 1:
        return -math.inf, best_acc
    return (cuts[best_k] + cuts[best_k + 1]) / 2, best_acc


def naive_kfold(s: np.ndarray, y: np.ndarray, fold_ids: np.ndarray) -> tuple[list[float], list[float]]:
    accs, thrs = [], []
    for f in sorted(set(fold_ids.tolist())):
        train = [i for i in range(len(s)) if fold_ids[i] != f]
        test = [i for i in range(len(s)) if fold_ids[i] == f]
        t, _ = naive_best_threshold(s[train], y[train])
        correct = sum((s[i] >= t) == y[i] for i in test)
        accs.append(correct / len(test))
        thrs.append(t)
    return accs, thrs


def naive_roc(s: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float], list[float]]:
    num_pos, num_neg = int(sum(y)), int(len(y) - sum(y))
    fpr, tpr, thr = [], [], []
    for t in naive_thresholds(s):
        tp, fp = naive_counts(s, y, t)
        fpr.append(fp / num_neg)
        tpr.append(tp / num_pos)
        thr.append(t)
    return fpr, tpr, thr


def naive_auc(s: np.ndarray, y: np.ndarray) -> float:
    """Mann-Whitney: P(pos > neg) + 0.5 P(pos == neg), over all pos-neg pairs."""
    pos, neg = s[y].tolist(), s[~y].tolist()
    total = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return total / (len(pos) * len(neg))


def naive_tar_at_far(counts: list[tuple[int, int]], y: np.ndarray, far: float) -> float:
    """Best TAR over all thresholds' (tp, fp) counts whose FAR is within the target."""
    num_pos, num_neg = int(sum(y)), int(len(y) - sum(y))
    if far * num_neg < 1 - 1e-9:
        return math.nan
    best = 0.0
    for tp, fp in counts:
        if fp <= far * num_neg + 1e-9:
            best = max(best, tp / num_pos)
    return best


def naive_eer(s: np.ndarray, y: np.ndarray) -> float:
    fpr, tpr, _ = naive_roc(s, y)
    for k in range(1, len(fpr)):
        d0, d1 = (1 - tpr[k - 1]) - fpr[k - 1], (1 - tpr[k]) - fpr[k]
        if d1 == 0:
            return fpr[k]
        if d0 > 0 > d1:
            x = d0 / (d0 - d1)
            return fpr[k - 1] + x * (fpr[k] - fpr[k - 1])
    raise AssertionError("no crossing")


def random_scores(seed: int, n: int = 240, decimals: int | None = 2) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping classes; rounding makes many ties (the hard case for sweeps)."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.5
    s = rng.normal(size=n) + 1.2 * y
    if decimals is not None:
        s = np.round(s, decimals)
    return s.astype(np.float32), y


# ------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("decimals", [1, None])
def test_kfold_matches_naive(seed: int, decimals: int | None) -> None:
    s, y = random_scores(seed, decimals=decimals)
    result = metrics.kfold_accuracy(s, y, folds=10)
    accs, thrs = naive_kfold(s.astype(np.float64), y, result.fold_ids)
    np.testing.assert_allclose(result.accuracies, accs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.thresholds, thrs, rtol=1e-12)
    assert result.mean == pytest.approx(np.mean(accs), abs=1e-12)
    assert result.std == pytest.approx(np.std(accs), abs=1e-12)


def test_kfold_explicit_fold_ids_match_naive() -> None:
    s, y = random_scores(7, n=300)
    ids = np.random.default_rng(0).integers(0, 5, size=s.size)
    result = metrics.kfold_accuracy(s, y, folds=ids)
    accs, thrs = naive_kfold(s.astype(np.float64), y, ids)
    np.testing.assert_allclose(result.accuracies, accs, atol=1e-12)
    np.testing.assert_allclose(result.thresholds, thrs, rtol=1e-12)


def test_contiguous_folds_are_sklearn_kfold() -> None:
    ids = metrics.contiguous_folds(23, 10)
    # KFold(10) on 23 samples: 3 folds of 3 then 7 folds of 2, contiguous
    assert ids.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + sum(([k] * 2 for k in range(3, 10)), [])


@pytest.mark.parametrize("seed", range(4))
def test_roc_auc_eer_match_naive(seed: int) -> None:
    s, y = random_scores(seed, decimals=1 if seed % 2 else None)
    fpr, tpr, thr = metrics.roc(s, y)
    nfpr, ntpr, nthr = naive_roc(s.astype(np.float64), y)
    np.testing.assert_allclose(fpr, nfpr, atol=1e-15)
    np.testing.assert_allclose(tpr, ntpr, atol=1e-15)
    np.testing.assert_array_equal(thr, nthr)
    assert metrics.auc(s, y) == pytest.approx(naive_auc(s.astype(np.float64), y), abs=1e-12)
    assert metrics.eer(s, y) == pytest.approx(naive_eer(s.astype(np.float64), y), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_tar_at_far_matches_naive(seed: int) -> None:
    s, y = random_scores(seed, n=3000, decimals=3)
    fars = [0.5, 1e-1, 1e-2, 3e-3, 1e-3, 1e-4, 1e-6]
    result = metrics.tar_at_far(s, y, fars)
    counts = [naive_counts(s.astype(np.float64), y, t) for t in naive_thresholds(s.astype(np.float64))]
    expected = [naive_tar_at_far(counts, y, f) for f in fars]
    np.testing.assert_allclose(result.tar, expected, atol=1e-15)
    defined = ~np.isnan(result.tar)
    assert (result.achieved_far[defined] <= np.asarray(fars)[defined]).all()
    # reported threshold really gives the reported TAR and FAR
    for t, tar, far in zip(result.threshold[defined], result.tar[defined], result.achieved_far[defined]):
        tp, fp = naive_counts(s.astype(np.float64), y, t)
        assert tp / y.sum() == tar and fp / (~y).sum() == far


# ------------------------------------------------------------------------------------ hand cases


def test_hand_case_small() -> None:
    s = np.array([0.9, 0.8, 0.7, 0.6])
    y = np.array([True, False, True, False])
    fpr, tpr, thr = metrics.roc(s, y)
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1]
    assert tpr.tolist() == [0, 0.5, 0.5, 1, 1]
    assert thr.tolist() == [math.inf, 0.9, 0.8, 0.7, 0.6]
    assert metrics.auc(s, y) == 0.75
    # accept >= 0.7 gets 3/4 right, and so does accept >= 0.9; the higher threshold wins the tie
    assert metrics.best_threshold(s, y) == (pytest.approx(0.85), 0.75)
    assert metrics.eer(s, y) == 0.5


def test_perfectly_separable() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([True, False], 500)
    s = np.where(y, rng.uniform(0.6, 1.0, 1000), rng.uniform(-1.0, 0.4, 1000))
    result = metrics.kfold_accuracy(s, y, folds=10)
    assert result.mean == 1.0 and result.std == 0.0
    assert metrics.auc(s, y) == 1.0
    assert metrics.eer(s, y) == 0.0
    t = metrics.tar_at_far(s, y, [1e-1, 1e-2, 2e-3, 1e-3])
    assert t.tar[:3].tolist() == [1.0, 1.0, 1.0] and math.isnan(t.tar[3])  # 1e-3 < 1/500 negatives


def test_inverted() -> None:
    y = np.repeat([True, False], 50)
    s = np.where(y, -1.0, 1.0) + np.linspace(0, 0.1, 100)
    assert metrics.auc(s, y) == 0.0
    assert metrics.eer(s, y) == 1.0
    # nothing beats a constant answer; ties go to the highest threshold = accept nothing
    thr, acc = metrics.best_threshold(s, y)
    assert thr == math.inf and acc == 0.5
    assert np.isnan(metrics.tar_at_far(s, y, 1e-3).tar[0])
    assert metrics.tar_at_far(s, y, 0.1).tar[0] == 0.0


def test_all_tied() -> None:
    y = np.array([True, False] * 10)
    s = np.full(20, 0.3)
    assert metrics.auc(s, y) == 0.5
    assert metrics.eer(s, y) == 0.5
    assert metrics.best_threshold(s, y) == (math.inf, 0.5)
    assert metrics.tar_at_far(s, y, 0.5).tar[0] == 0.0  # accepting the tie would accept every negative


def test_threshold_between_adjacent_floats() -> None:
    hi = 1.0
    lo = np.nextafter(hi, 0)
    s = np.array([hi, lo])
    y = np.array([True, False])
    thr, acc = metrics.best_threshold(s, y)
    assert acc == 1.0 and lo < thr <= hi


def test_pair_scores_cosine_and_euclidean() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(20, 8)), rng.normal(size=(20, 8))
    cos = metrics.pair_scores(a * 3.0, b, "cosine")
    for i in range(20):
        expected = sum(a[i] * b[i]) / math.sqrt(sum(a[i] ** 2) * sum(b[i] ** 2))
        assert cos[i] == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(metrics.pair_scores(a, b, "euclidean"), -np.sqrt(((a - b) ** 2).sum(1)))


def test_cmc_and_ranks_match_naive() -> None:
    rng = np.random.default_rng(3)
    gallery_labels = np.r_[np.arange(30), np.arange(10), np.full(60, -1)]  # some ids twice, distractors
    probe_labels = np.r_[rng.integers(0, 30, 40), [99]]  # last probe has no mate
    sim = np.round(rng.normal(size=(41, gallery_labels.size)), 1)  # ties on purpose
    ranks = metrics.match_ranks(sim, probe_labels, gallery_labels)
    for p in range(41):
        mates = [sim[p, g] for g in range(gallery_labels.size) if gallery_labels[g] == probe_labels[p]]
        if not mates:
            assert ranks[p] == math.inf
            continue
        best = max(mates)
        wrong_above = sum(
            1 for g in range(gallery_labels.size)
            if gallery_labels[g] != probe_labels[p] and sim[p, g] >= best
        )
        assert ranks[p] == 1 + wrong_above
    curve = metrics.cmc(ranks, 5)
    assert curve.tolist() == [sum(r <= k for r in ranks) / 41 for k in range(1, 6)]
    assert metrics.rank_k_accuracy(ranks, 1) == curve[0]


# ------------------------------------------------------------------------------------ bad input


def test_bad_input_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="scores has 3 entries but issame has 2"):
        metrics.kfold_accuracy(np.zeros(3), np.array([True, False]))
    with pytest.raises(ValueError, match="NaN"):
        metrics.roc(np.array([0.1, np.nan]), np.array([True, False]))
    with pytest.raises(ValueError, match="issame must be bool or 0/1"):
        metrics.auc(np.array([0.1, 0.2]), np.array([2, 0]))
    with pytest.raises(ValueError, match="both same and different"):
        metrics.tar_at_far(np.array([0.1, 0.2]), np.array([True, True]))
    with pytest.raises(ValueError, match="FAR targets"):
        metrics.tar_at_far(np.array([0.1, 0.2]), np.array([True, False]), [0.0])
    with pytest.raises(ValueError, match="num_folds"):
        metrics.kfold_accuracy(np.zeros(5), np.array([1, 0, 1, 0, 1]), folds=10)
    with pytest.raises(ValueError, match="fold ids"):
        metrics.kfold_accuracy(np.zeros(4), np.array([1, 0, 1, 0]), folds=np.array([0, 1, 0]))


def test_bad_embeddings() -> None:
    a = np.ones((4, 3))
    b = np.ones((4, 3))
    b[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"embeddings2 has NaN/inf in 1 rows \(first: \[2\]\)"):
        metrics.pair_scores(a, b)
    with pytest.raises(ValueError, match="same shape"):
        metrics.pair_scores(a, np.ones((3, 3)))
    with pytest.raises(ValueError, match="all-zero rows"):
        metrics.pair_scores(a, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.pair_scores(a, a, "manhattan")


def test_ranks_from_topk_equals_dense_ranks_with_full_k() -> None:
    rng = np.random.default_rng(5)
    gallery_labels = np.r_[np.arange(20), np.arange(5), np.full(30, -1)]
    probe_labels = np.r_[rng.integers(0, 20, 25), [77]]
    sim = np.round(rng.normal(size=(26, gallery_labels.size)), 1)
    order = np.argsort(-sim, axis=1, kind="stable")
    top = np.take_along_axis(sim, order, axis=1)
    np.testing.assert_array_equal(
        metrics.ranks_from_topk(top, gallery_labels[order], probe_labels),
        metrics.match_ranks(sim, probe_labels, gallery_labels),
    )
    truncated = metrics.ranks_from_topk(top[:, :3], gallery_labels[order][:, :3], probe_labels)
    dense = metrics.match_ranks(sim, probe_labels, gallery_labels)
    np.testing.assert_array_equal(truncated[dense <= 2], dense[dense <= 2])
