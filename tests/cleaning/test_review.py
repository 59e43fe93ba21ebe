import numpy as np

from marginface.cleaning import centroids as cc
from marginface.cleaning.embedders import from_names
from marginface.cleaning.review import noise_precision_recall, overlap_calibration, subset


def _set(prefix, counts, d=16, seed=0):
    rng = np.random.default_rng(seed)
    names, rows = [], []
    for k, n in enumerate(counts):
        centre = rng.normal(size=d)
        for i in range(n):
            names.append(f"{prefix}{k}/{i}.jpg")
            rows.append(centre + 0.3 * rng.normal(size=d))
    return from_names(names, np.stack(rows))


def test_overlap_calibration_compares_like_with_like():
    train, big, single = _set("t", [8] * 6), _set("b", [6] * 5, seed=1), _set("s", [1] * 5, seed=2)
    sets = [(train.embeddings, train.labels)]
    assert overlap_calibration(train, big).threshold == cc.calibrate(
        sets + [(big.embeddings, big.labels)]).threshold  # split-half: centroid vs centroid
    assert overlap_calibration(train, single).threshold == cc.calibrate(
        sets + [(single.embeddings, single.labels)], holdout=1).threshold  # one image vs the rest


def test_subset_and_noise_report():
    data = _set("x", [12, 12, 3, 12])
    part = subset(data, 10)
    assert part.classes == ["x0", "x1", "x3"] and len(part.names) == 36
    report = noise_precision_recall(part, 0.1, seeds=(0, 1))
    assert report["images"] == 36 and len(report["swapped_images"]) == 2
    for rule in ("threshold", "robust"):
        assert 0 <= report[rule]["precision"] <= 1 and 0 <= report[rule]["recall"] <= 1


def test_nearest_to_centroid_and_nearest_test_distances_match_naive_loops():
    from marginface.cleaning.review import nearest_test_distances, nearest_to_centroid

    data, test = _set("x", [7, 5]), _set("y", [3, 4, 2], seed=5)
    xn = data.embeddings.astype(np.float64) / np.linalg.norm(data.embeddings, axis=1, keepdims=True)
    rows = np.flatnonzero(data.labels == 1)
    c = xn[rows].mean(0) / np.linalg.norm(xn[rows].mean(0))
    naive = sorted((1 - xn[r] @ c, r) for r in rows)[:3]
    got = nearest_to_centroid(data, 1, n=3)
    assert [r for r, _ in got] == [r for _, r in naive]
    assert np.allclose([d for _, d in got], [d for d, _ in naive], atol=1e-6)
    tn = test.embeddings.astype(np.float64) / np.linalg.norm(test.embeddings, axis=1, keepdims=True)
    cents_t = [tn[test.labels == k].sum(0) / np.linalg.norm(tn[test.labels == k].sum(0)) for k in range(3)]
    for k in range(2):
        ck = xn[data.labels == k].sum(0) / np.linalg.norm(xn[data.labels == k].sum(0))
        assert abs(nearest_test_distances(data, test)[k] - min(1 - ck @ t for t in cents_t)) < 1e-6
