import numpy as np

from marginface.cleaning import centroids as cc


def _ids(c=6, n=8, d=16, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d))
    x = np.repeat(centres, n, 0) + spread * rng.normal(size=(c * n, d))
    return x, np.repeat(np.arange(c), n)


def test_leave_one_out_matches_naive_float64_loop():
    x, y = _ids()
    y[-1] = 99  # a singleton: NaN
    got = cc.leave_one_out_distances(x, y)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    for i in range(len(x)):
        rest = [xn[j] for j in range(len(x)) if j != i and y[j] == y[i]]
        if not rest:
            assert np.isnan(got[i])
            continue
        c = np.sum(rest, 0)
        assert abs(got[i] - (1 - xn[i] @ c / np.linalg.norm(c))) < 1e-12


def test_planted_outliers_found_by_both_rules():
    x, y = _ids(spread=0.2)
    noisy, mask = cc.inject_label_noise(y, 0.1, seed=1)
    d = cc.leave_one_out_distances(x, noisy)
    assert cc.precision_recall(cc.threshold_outliers(d, 0.2), mask) == (1.0, 1.0)
    p, r = cc.precision_recall(cc.robust_outliers(d, noisy, k=3, floor=0.2), mask)
    assert p == 1.0 and r == 1.0


def test_planted_duplicates_and_overlap():
    x, y = _ids(c=8)
    y2 = y.copy()
    y2[y == 7] = 8  # identity 7's second half becomes a new label: a duplicate pair (7, 8)
    y2[np.flatnonzero(y == 7)[:4]] = 7
    cal = cc.calibrate([(x, y)])
    assert cal.same.max() < cal.threshold < cal.different.min()
    pairs = cc.duplicate_pairs(cc.centroids(x, y2), cal.threshold)
    assert [(a, b) for a, b, _ in pairs] == [(7, 8)]
    assert cc.merge_groups(pairs, np.bincount(y2)) in ({8: 7}, {7: 8})
    train = cc.centroids(x[y < 5], y[y < 5])
    test = cc.centroids(x[y >= 3], y[y >= 3] - 3)
    assert [(a, b) for a, b, _ in cc.overlap(train, test, cal.threshold)] == [(3, 0), (4, 1)] or \
        sorted((a, b) for a, b, _ in cc.overlap(train, test, cal.threshold)) == [(3, 0), (4, 1)]


def test_min_error_threshold_matches_brute_force_and_ignores_contamination():
    rng = np.random.default_rng(3)
    same = np.concatenate([rng.normal(0.2, 0.05, 200), [0.9, 0.95]])  # two label errors
    diff = np.concatenate([rng.normal(0.7, 0.08, 100), rng.normal(0.2, 0.05, 20)])  # 20 duplicates
    t = cc.min_error_threshold(same, diff)

    def err(x):
        return np.mean(same > x) + np.mean(diff <= x)

    grid = np.linspace(0, 1.2, 12001)
    assert err(t) <= min(err(g) for g in grid) + 1e-12
    assert np.mean(same > t) < 0.05  # the equal-error cut would put ~1/6 of the genuine pairs above it
    assert np.mean(same > cc.equal_error_threshold(same, diff)) > 0.1


def test_holdout_distances_match_naive_loop():
    x, y = _ids(c=5, n=6, seed=4)
    same, diff = cc.holdout_distances(x, y, holdout=2, min_rest=3, seed=7)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    rng = np.random.default_rng(7)
    cents = [xn[y == k].sum(0) / np.linalg.norm(xn[y == k].sum(0)) for k in range(5)]
    for k in range(5):
        rows = rng.permutation(np.flatnonzero(y == k))
        held, rest = xn[rows[:2]].sum(0), xn[rows[2:]].sum(0)
        held /= np.linalg.norm(held)
        assert abs(same[k] - (1 - held @ rest / np.linalg.norm(rest))) < 1e-12
        assert abs(diff[k] - min(1 - held @ cents[j] for j in range(5) if j != k)) < 1e-12
