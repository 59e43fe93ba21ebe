"""The three cleaning runs on :class:`~marginface.cleaning.embedders.LabelledEmbeddings`, and their review sheets.

Each ``find_*`` returns numbers only (what is flagged, the distances, the threshold and how it was calibrated);
``*_items`` turn a result into :class:`~marginface.cleaning.sheets.Item` s for the contact sheet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from marginface.cleaning import centroids as cc
from marginface.cleaning.embedders import LabelledEmbeddings
from marginface.cleaning.sheets import Item, Row


@dataclass(frozen=True)
class Outliers:
    """(N,) leave-one-out distances and flags, the rule, its threshold and the calibration summary."""

    distances: np.ndarray
    flags: np.ndarray
    rule: str
    threshold: float
    calibration: dict | None


def find_outliers(data: LabelledEmbeddings, rule: str = "robust", threshold: float | None = None,
                  k: float = 3.0, floor: float | None = None, min_images: int = 4) -> Outliers:
    """Outliers by leave-one-out distance: ``rule='threshold'`` (absolute) or ``'robust'`` (median + k MAD).

    Without ``threshold`` it is calibrated on this set: one held-out image vs the rest of its identity against
    that image vs the nearest other identity (:func:`~marginface.cleaning.centroids.holdout_distances`).
    ``floor`` (robust rule only; default: the threshold) keeps tight identities from flagging ordinary images.
    """
    if rule not in ("threshold", "robust"):
        raise ValueError(f"outlier rule must be 'threshold' or 'robust', got {rule!r}")
    distances = cc.leave_one_out_distances(data.embeddings, data.labels)
    summary = None
    if threshold is None:
        cal = cc.calibrate([(data.embeddings, data.labels)], min_images, holdout=1)
        threshold, summary = cal.threshold, cal.summary()
    if rule == "threshold":
        flags = cc.threshold_outliers(distances, threshold)
    else:
        flags = cc.robust_outliers(distances, data.labels, k, min_images, threshold if floor is None else floor)
    return Outliers(distances, flags, rule, float(threshold), summary)


def find_duplicates(data: LabelledEmbeddings, threshold: float | None = None,
                    min_images: int = 4) -> tuple[list[tuple[int, int, float]], dict[int, int], float, dict | None]:
    """Duplicate identity pairs ``(a, b, d)``, the merge map (label -> representative), threshold, calibration."""
    cents = cc.centroids(data.embeddings, data.labels)
    summary = None
    if threshold is None:
        cal = cc.calibrate([(data.embeddings, data.labels)], min_images)
        threshold, summary = cal.threshold, cal.summary()
    pairs = cc.duplicate_pairs(cents, threshold)
    return pairs, cc.merge_groups(pairs, np.bincount(data.labels, minlength=len(data.classes))), float(threshold), \
        summary


def overlap_calibration(train: LabelledEmbeddings, test: LabelledEmbeddings, min_images: int = 4) -> cc.Calibration:
    """Calibrate the overlap threshold for one test set, comparing like with like.

    The overlap test compares a training centroid with a test centroid of however many images the test
    identities have: when most have ``min_images`` or more, split-half centroids of both sets (centroid vs
    centroid); otherwise ``k`` held-out images vs the rest, k = the test set's median images per identity.
    """
    k = int(np.median(np.bincount(test.labels)))
    sets = [(d.embeddings, d.labels) for d in (train, test)]
    return cc.calibrate(sets, min_images) if k >= min_images else cc.calibrate(sets, min_images, holdout=k)


def find_overlap(train: LabelledEmbeddings, tests: Sequence[LabelledEmbeddings],
                 threshold: float | Sequence[float] | None = None,
                 min_images: int = 4) -> tuple[list[tuple[int, int, int, float]], list[float],
                                               list[cc.Calibration | None]]:
    """Train identities within the threshold of a test identity: ``(train label, test set, test label, d)``.

    Returns the pairs (closest first), the threshold of each test set (``threshold``: one for all or one per
    test set; None: calibrated per test set by :func:`overlap_calibration`) and each
    :class:`~marginface.cleaning.centroids.Calibration` (None when the threshold was given).
    """
    if threshold is None or np.ndim(threshold) == 0:
        threshold = [threshold] * len(tests)
    if len(threshold) != len(tests):
        raise ValueError(f"give one overlap threshold, or one per test set ({len(tests)}), not {len(threshold)}")
    train_cents = cc.centroids(train.embeddings, train.labels)
    found, thresholds, summaries = [], [], []
    for t, test in enumerate(tests):
        summary, limit = None, threshold[t]
        if limit is None:
            cal = overlap_calibration(train, test, min_images)
            limit, summary = cal.threshold, cal
        thresholds.append(float(limit))
        summaries.append(summary)
        found += [(a, t, b, d) for a, b, d in cc.overlap(train_cents, cc.centroids(test.embeddings, test.labels),
                                                         limit)]
    return sorted(found, key=lambda f: f[3]), thresholds, summaries


def nearest_test_distances(train: LabelledEmbeddings, test: LabelledEmbeddings) -> np.ndarray:
    """(C_train,) distance from each training centroid to its nearest test centroid."""
    sim = cc.centroids(train.embeddings, train.labels) @ cc.centroids(test.embeddings, test.labels).T
    return 1.0 - np.nanmax(sim, axis=1)


def nearest_to_centroid(data: LabelledEmbeddings, label: int, n: int = 6) -> list[tuple[int, float]]:
    """The ``n`` images of identity ``label`` nearest its (full) centroid: ``(row, cosine distance)``."""
    rows = np.flatnonzero(data.labels == label)
    x = data.embeddings[rows] / np.linalg.norm(data.embeddings[rows], axis=1, keepdims=True)
    c = x.sum(0)
    d = 1.0 - x @ (c / np.linalg.norm(c))
    order = np.argsort(d, kind="stable")[:n]
    return [(int(rows[i]), float(d[i])) for i in order]


def _identity_row(data: LabelledEmbeddings, label: int, heading: str, n: int = 6) -> Row:
    return Row(f"{heading} {data.classes[label]} ({int((data.labels == label).sum())} images): nearest its centroid",
               [(data.image_path(i), f"{_file(data, i)}\nd={d:.3f}") for i, d in nearest_to_centroid(data, label, n)])


def _file(data: LabelledEmbeddings, i: int) -> str:
    return data.names[i].rsplit("/", 1)[-1]


def outlier_items(data: LabelledEmbeddings, result: Outliers, max_items: int = 60) -> list[Item]:
    """One item per identity with flagged images (worst first): its centroid's nearest images, then the flagged."""
    flagged = np.flatnonzero(result.flags)
    by_label: dict[int, list[int]] = {}
    for i in flagged[np.argsort(-result.distances[flagged], kind="stable")]:
        by_label.setdefault(int(data.labels[i]), []).append(int(i))
    items = []
    for label, rows in list(by_label.items())[:max_items]:
        cells = [(data.image_path(i), f"{_file(data, i)}\nloo d={result.distances[i]:.3f}") for i in rows]
        items.append(Item(f"{data.classes[label]}: {len(rows)} flagged", [
            _identity_row(data, label, "identity"), Row("flagged (leave-one-out distance to the rest)", cells)],
            [f"{data.names[i]}\t{result.distances[i]:.4f}" for i in rows]))
    return items


def pair_items(a: LabelledEmbeddings, b: LabelledEmbeddings, pairs: Sequence[tuple[int, int, float]],
               names: tuple[str, str] = ("", ""), max_items: int = 60) -> list[Item]:
    """One item per ``(label in a, label in b, distance)``: both identities' images nearest their centroids."""
    return [Item(f"{names[0]}{a.classes[i]} ~ {names[1]}{b.classes[j]}: centroid distance {d:.3f}",
                 [_identity_row(a, i, names[0] or "A"), _identity_row(b, j, names[1] or "B")],
                 [f"{a.classes[i]}\t{b.classes[j]}\t{d:.4f}"]) for i, j, d in pairs[:max_items]]


def subset(data: LabelledEmbeddings, min_images: int) -> LabelledEmbeddings:
    """Only the identities with at least ``min_images`` images (labels renumbered)."""
    from marginface.cleaning.embedders import from_names

    counts = np.bincount(data.labels)
    rows = np.flatnonzero(counts[data.labels] >= min_images)
    if rows.size == 0:
        raise ValueError(f"no identity has {min_images} or more images")
    part = from_names([data.names[i] for i in rows], data.embeddings[rows])
    return LabelledEmbeddings(part.names, part.labels, part.classes, part.embeddings, data.root,
                              None if data.paths is None else [data.paths[i] for i in rows])


def noise_precision_recall(data: LabelledEmbeddings, fraction: float, seeds: Sequence[int] = (0, 1, 2),
                           threshold: float | None = None, k: float = 3.0) -> dict:
    """Outlier precision/recall on planted label noise, both rules, mean and std over ``seeds``.

    Each seed swaps the labels of ``fraction`` of the images between pairs of different identities
    (:func:`~marginface.cleaning.centroids.inject_label_noise`); the calibration (when ``threshold`` is None)
    runs on the *noisy* labels, as it would for a user. Natural label errors already in the data count as false
    positives here, so precision is a lower bound.
    """
    results: dict[str, list[tuple[float, float, float]]] = {"threshold": [], "robust": []}
    swapped = []
    for seed in seeds:
        noisy, truth = cc.inject_label_noise(data.labels, fraction, seed)
        swapped.append(int(truth.sum()))
        noisy_data = LabelledEmbeddings(data.names, noisy, data.classes, data.embeddings, data.root, data.paths)
        for rule in results:
            found = find_outliers(noisy_data, rule, threshold, k)
            results[rule].append((*cc.precision_recall(found.flags, truth), found.threshold))
    out = {"images": len(data.names), "identities": len(data.classes), "fraction": fraction,
           "swapped_images": swapped, "seeds": list(seeds)}
    for rule, rows in results.items():
        arr = np.array(rows)
        out[rule] = {"precision": float(arr[:, 0].mean()), "precision_std": float(arr[:, 0].std()),
                     "recall": float(arr[:, 1].mean()), "recall_std": float(arr[:, 1].std()),
                     "threshold": float(arr[:, 2].mean())}
    return out
