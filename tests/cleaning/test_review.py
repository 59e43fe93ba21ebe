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
