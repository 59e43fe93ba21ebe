"""Identification on faiss: exact ranks vs a dense reference, TAR@FAR among distractors, approximate indexes."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from marginface.evaluation import identification as ident
from marginface.evaluation import metrics

pytest.importorskip("faiss")


def synthetic(seed: int = 0, ids: int = 50, dim: int = 32, noise: float = 0.9, distractors: int = 2000):
    """Identity centres; 2 gallery rows for the first 10 ids, 1 for the rest; 2 probes per id; distractors."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim))
    gallery_labels = np.r_[np.arange(ids), np.arange(10)]
    probe_labels = np.repeat(np.arange(ids), 2)
    gallery = centres[gallery_labels] + noise * rng.normal(size=(gallery_labels.size, dim))
    probes = centres[probe_labels] + noise * rng.normal(size=(probe_labels.size, dim))
    return (gallery.astype(np.float32), gallery_labels, probes.astype(np.float32), probe_labels,
            rng.normal(size=(distractors, dim)).astype(np.float32))


def unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_identification_matches_dense_ranks() -> None:
    gallery, g_lab, probes, p_lab, dis = synthetic()
    index = ident.build_index(gallery, g_lab, [dis[:700], dis[700:]])  # chunks
    assert len(index) == gallery.shape[0] + dis.shape[0]
    result = ident.identify(index, probes, p_lab, max_rank=10)
    labels = np.r_[g_lab, np.full(dis.shape[0], -1)]
    dense = metrics.match_ranks(unit(probes) @ unit(np.r_[gallery, dis]).T, p_lab, labels)
    expected = np.where(dense <= 10, dense, np.inf)
    np.testing.assert_array_equal(result.ranks, expected)
    assert result.rank1 == np.mean(dense == 1)
    np.testing.assert_allclose(result.cmc, [np.mean(dense <= k) for k in range(1, 11)])
    assert 0 < result.rank1 < 1  # the noise makes this a real test, not a trivially perfect one


@pytest.mark.parametrize("far", [[1e-2, 1e-3, 1e-4], [3e-5, 1e-6]])
def test_tar_with_distractors_matches_dense_tar_at_far(far: list[float]) -> None:
    gallery, g_lab, probes, p_lab, dis = synthetic(seed=1)
    index = ident.build_index(gallery, g_lab, dis)
    got = ident.verification_with_distractors(index, gallery, g_lab, probes, p_lab, far)
    # dense reference: every probe x every row, float64, labels by identity
    labels = np.r_[g_lab, np.full(dis.shape[0], -1)]
    sim = unit(probes) @ unit(np.r_[gallery, dis]).T
    same = p_lab[:, None] == labels[None, :]
    expected = metrics.tar_at_far(sim.ravel(), same.ravel(), far)
    assert got.num_negatives == expected.num_negatives == (~same).sum()
    np.testing.assert_array_equal(np.isnan(got.tar), np.isnan(expected.tar))
    # float32 (faiss) vs float64 scores: allow one genuine pair's worth of difference at a near-tie
    np.testing.assert_allclose(got.tar, expected.tar, atol=1.0 / same.sum(), equal_nan=True)
    np.testing.assert_allclose(got.achieved_far, expected.achieved_far, atol=1.0 / (~same).sum(), equal_nan=True)


@pytest.mark.parametrize(("kind", "options"), [("ivf", {"nlist": 16, "nprobe": 16}), ("hnsw", {"hnsw_m": 16})])
def test_approximate_indexes_agree_with_flat(kind: str, options: dict) -> None:
    gallery, g_lab, probes, p_lab, dis = synthetic(seed=2, noise=0.6)
    flat = ident.identify(ident.build_index(gallery, g_lab, dis), probes, p_lab, 5)
    approx = ident.identify(ident.build_index(gallery, g_lab, dis, kind, **options), probes, p_lab, 5)
    if kind == "ivf":  # nprobe = nlist visits every cell: exact
        np.testing.assert_array_equal(approx.ranks, flat.ranks)
    assert abs(approx.rank1 - flat.rank1) <= 0.03


def test_approximate_index_refused_for_tar() -> None:
    gallery, g_lab, probes, p_lab, dis = synthetic(seed=4)
    index = ident.build_index(gallery, g_lab, dis, "hnsw", hnsw_m=8)
    with pytest.raises(ValueError, match="needs the exact 'flat' index"):
        ident.verification_with_distractors(index, gallery, g_lab, probes, p_lab, 1e-4)
    report = ident.megaface_report(gallery, g_lab, probes, p_lab, dis, kind="hnsw", hnsw_m=8)
    assert report.verification is None and "not computed (approximate index)" in report.summary()


def test_megaface_report() -> None:
    gallery, g_lab, probes, p_lab, dis = synthetic(seed=3)
    report = ident.megaface_report(gallery, g_lab, probes, p_lab, dis, far=[1e-4, 1e-7])
    assert (report.num_gallery, report.num_distractors, report.num_probes) == (60, 2000, 100)
    assert np.isnan(report.verification.tar[1])  # 1e-7 < 1 / (100 x 2060 - genuine)
    assert "rank-1" in report.summary() and "TAR@FAR=1e-07 n/a" in report.summary()


def test_bad_input() -> None:
    gallery, g_lab, probes, p_lab, dis = synthetic()
    index = ident.build_index(gallery, g_lab)
    bad = probes.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"queries has 1 NaN/inf or all-zero rows \(first: \[3\]\)"):
        ident.identify(index, bad, p_lab)
    with pytest.raises(ValueError, match="probe_labels"):
        ident.identify(index, probes, p_lab[:-1])
    with pytest.raises(ValueError, match="D=16"):
        index.add(np.ones((2, 16)), 0)
    with pytest.raises(ValueError, match="unknown index kind"):
        ident.GalleryIndex(8, "lsh")
    with pytest.raises(ValueError, match="gallery_labels"):
        ident.build_index(gallery, -g_lab - 1)
    with pytest.raises(ValueError, match="needs at least that many training rows"):
        ident.build_index(gallery[:5], g_lab[:5], kind="ivf", nlist=16)


def test_missing_faiss_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(ImportError, match=r"pip install marginface\[search\]"):
        ident.GalleryIndex(8)
