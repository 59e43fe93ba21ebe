"""IJB-B/C protocol on a synthetic release in the real file formats, against naive float64 loops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tests.evaluation.ijb_fixture import Truth, write_synthetic_ijb
from torch import nn

from marginface.evaluation import ijb, metrics

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Truth]:
    root = tmp_path_factory.mktemp("IJB_release") / "IJBC"
    return root, write_synthetic_ijb(root)


@pytest.fixture(scope="module")
def features(release: tuple[Path, Truth]) -> np.ndarray:
    return ijb.embed_images(Pool(), ijb.read_ijb(release[0]), batch_size=128)


class Pool(nn.Module):
    """(B, 3, 112, 112) -> (B, 24): pooled colour through a fixed random map (a real backbone is too slow here)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 6 * 6, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 6).flatten(1))


# ---------------------------------------------------------------------------------------------- naive references


def naive_pool(features, templates, medias, scores, options: ijb.PoolingOptions) -> dict[int, np.ndarray]:
    """Template -> unit float64 feature: loops over templates, then over their media, as the protocol reads."""
    f = np.asarray(features, np.float64)
    out = {}
    for t in sorted(set(templates.tolist())):
        media_feats = []
        for m in sorted(set(medias[templates == t].tolist())):
            rows = [i for i in range(len(f)) if templates[i] == t and medias[i] == m]
            vecs = []
            for i in rows:
                v = f[i] / np.sqrt(np.sum(f[i] ** 2)) if options.normalize_images else f[i].copy()
                vecs.append(v * float(scores[i]) if options.detector_score else v)
            media_feats.append(sum(vecs) / len(vecs))
        total = sum(media_feats)
        out[t] = total / np.sqrt(np.sum(total**2))
    return out


def naive_tar_at_far(scores: list[float], labels: list[bool], far: float) -> float:
    """Try every threshold (each distinct score, accept if >=); best TAR with false accepts <= far * negatives."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels, bool)
    neg, pos = int((~y).sum()), int(y.sum())
    if far * neg < 1 - 1e-9:
        return float("nan")
    best = 0.0
    for t in np.unique(s):  # one brute-force count per threshold
        if np.sum((s >= t) & ~y) <= far * neg + 1e-9:
            best = max(best, np.sum((s >= t) & y) / pos)
    return float(best)


def naive_open_set(gallery: dict[int, np.ndarray], gallery_subject: dict[int, int], probes: dict[int, np.ndarray],
                   probe_subject: dict[int, int], fpirs: list[float], ranks: list[int]) -> tuple[dict, list]:
    """Per probe, loop over the gallery: rank of the mate, top score; then FPIR/TPIR by trying every threshold."""
    mated, nonmated_top = [], []  # (rank, mate score) / top score
    for p, pf in probes.items():
        sims = {g: float(np.dot(pf, gf)) for g, gf in gallery.items()}
        mates = [g for g in gallery if gallery_subject[g] == probe_subject[p]]
        if mates:
            best = max(sims[g] for g in mates)
            rank = 1 + sum(1 for g in gallery if gallery_subject[g] != probe_subject[p] and sims[g] >= best)
            mated.append((rank, best))
        else:
            nonmated_top.append(max(sims.values()))
    cmc = {r: sum(1 for rank, _ in mated if rank <= r) / len(mated) for r in ranks}
    tpirs = []
    for fpir in fpirs:
        if fpir * len(nonmated_top) < 1 - 1e-9:
            tpirs.append(float("nan"))
            continue
        best = 0.0
        top = np.array(nonmated_top)
        hit_scores = np.array([s if rank == 1 else -np.inf for rank, s in mated])
        for t in np.unique(np.r_[top, hit_scores[np.isfinite(hit_scores)]]):  # one brute-force count per threshold
            if np.sum(top >= t) <= fpir * len(top) + 1e-9:
                best = max(best, np.sum(hit_scores >= t) / len(mated))
        tpirs.append(float(best))
    return cmc, tpirs


# ---------------------------------------------------------------------------------------------- reading, aligning


def test_read_ijb_matches_what_was_written(release: tuple[Path, Truth]) -> None:
    root, truth = release
    meta = ijb.read_ijb(root)
    assert meta.name == "IJB-C" and meta.images.tolist() == truth.names
    np.testing.assert_array_equal(meta.templates, truth.templates)
    np.testing.assert_array_equal(meta.medias, truth.medias)
    np.testing.assert_allclose(meta.landmarks, truth.landmarks, atol=1e-3)
    np.testing.assert_allclose(meta.face_scores, truth.scores, atol=1e-6)
    np.testing.assert_array_equal(meta.pairs, truth.pairs)
    np.testing.assert_array_equal(meta.issame, truth.issame)
    for g in ("G1", "G2"):
        for got, want in zip(meta.galleries[g], truth.galleries[g]):
            np.testing.assert_array_equal(got, want)
    for got, want in zip(meta.probes, truth.probes):
        np.testing.assert_array_equal(got, want)
    assert 200 <= len(truth.names) <= 600  # "a few hundred media"


def test_align_crop_recovers_the_face(release: tuple[Path, Truth]) -> None:
    """The warp from the file's five points puts the face back where the render had it: far closer than the same
    warp from points moved by 2 px (the renders carry sensor noise, so even the exact warp is not pixel-equal)."""
    root, truth = release

    def error(k: int, landmarks: np.ndarray) -> float:
        crop = ijb.align_crop(root / "loose_crop" / truth.names[k], landmarks)
        pixels = (crop.transpose(1, 2, 0) + 1) * 127.5
        return float(np.abs(pixels[8:-8, 8:-8] - truth.renders[truth.names[k]][8:-8, 8:-8]).mean())

    exact, moved = [], []
    for k in range(0, len(truth.names), 17):
        exact.append(error(k, truth.landmarks[k]))
        moved.append(error(k, truth.landmarks[k] + np.array([2.0, 0.0])))
    assert np.mean(exact) < 0.6 * np.mean(moved) and max(exact) < 10, (exact, moved)


def test_embed_images_is_the_flip_sum_of_each_aligned_crop(release: tuple[Path, Truth], features: np.ndarray) -> None:
    root, truth = release
    meta = ijb.read_ijb(root)
    model = Pool()
    for k in (0, 5, len(truth.names) - 1):
        x = torch.from_numpy(ijb.align_crop(root / "loose_crop" / truth.names[k], meta.landmarks[k]))[None]
        with torch.no_grad():
            want = model(x) + model(torch.flip(x, dims=[3]))
        np.testing.assert_allclose(features[k], want[0].numpy(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- pooling, 1:1


@pytest.mark.parametrize("normalize_images", [False, True])
@pytest.mark.parametrize("detector_score", [False, True])
def test_pool_templates_matches_naive_loop(release: tuple[Path, Truth], normalize_images: bool,
                                           detector_score: bool) -> None:
    _, truth = release
    rng = np.random.default_rng(1)
    features = rng.normal(size=(len(truth.names), 16)).astype(np.float32) * rng.uniform(0.5, 3, (len(truth.names), 1))
    options = ijb.PoolingOptions(normalize_images=normalize_images, detector_score=detector_score)
    ids, pooled = ijb.pool_templates(features, truth.templates, truth.medias, truth.scores, options)
    want = naive_pool(features, truth.templates, truth.medias, truth.scores, options)
    assert ids.tolist() == sorted(want)
    np.testing.assert_allclose(pooled, np.stack([want[t] for t in ids]), atol=1e-6)


def test_shared_media_is_pooled_per_template(release: tuple[Path, Truth]) -> None:
    """The fixture shares a media id between two templates: grouping by media alone would be caught here."""
    _, truth = release
    per_media = {}
    for t, m in zip(truth.templates, truth.medias):
        per_media.setdefault(int(m), set()).add(int(t))
    assert any(len(ts) > 1 for ts in per_media.values())


def test_pair_cosines_dense_and_gather_paths_agree() -> None:
    rng = np.random.default_rng(2)
    f = rng.normal(size=(300, 32)).astype(np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    dense = (rng.integers(0, 40, 5000), rng.integers(40, 300, 5000))  # 40 x 260 block, 5000 pairs: block path
    sparse = (rng.integers(0, 300, 50), rng.integers(0, 300, 50))  # gather path
    for r1, r2 in (dense, sparse):
        want = np.array([np.dot(f[a].astype(np.float64), f[b]) for a, b in zip(r1, r2)])
        np.testing.assert_allclose(ijb.pair_cosines(f, r1, r2, block=16), want, atol=1e-6)


def test_verification_matches_naive_float64(release: tuple[Path, Truth], features: np.ndarray) -> None:
    root, truth = release
    meta = ijb.read_ijb(root)
    result = ijb.evaluate_features(meta, features)
    pooled = naive_pool(features, truth.templates, truth.medias, truth.scores, ijb.PoolingOptions())
    scores = [float(np.dot(pooled[a], pooled[b])) for a, b in truth.pairs]
    np.testing.assert_allclose(result.verification.scores, scores, atol=1e-6)
    fars = [1e-3, 1e-2, 0.05, 1e-1]
    got = metrics.tar_at_far(result.verification.scores, truth.issame, fars).tar
    want = [naive_tar_at_far(scores, truth.issame.tolist(), f) for f in fars]
    np.testing.assert_allclose(got, want)
    reported = dict(zip(result.verification.tar_at_far.far.tolist(), result.verification.tar_at_far.tar.tolist()))
    np.testing.assert_allclose([reported[1e-3], reported[1e-2], reported[1e-1]], [want[0], want[1], want[3]])
    assert result.verification.num_genuine == int(truth.issame.sum()) and 0.5 < result.verification.auc <= 1


# ---------------------------------------------------------------------------------------------- 1:N


def test_identification_matches_naive_float64(release: tuple[Path, Truth], features: np.ndarray) -> None:
    root, truth = release
    meta = ijb.read_ijb(root)
    fpirs, ranks = [0.05, 0.1, 0.3, 0.6], [1, 2, 5]
    result = ijb.evaluate_features(meta, features, fpir=fpirs, ranks=ranks).identification
    pooled = naive_pool(features, truth.templates, truth.medias, truth.scores, ijb.PoolingOptions())
    probe_subject = dict(zip(truth.probes[0].tolist(), truth.probes[1].tolist()))
    probes = {t: pooled[t] for t in probe_subject}
    hits, mated, tpirs = dict.fromkeys(ranks, 0.0), 0, []
    for g, (gal_t, gal_s) in truth.galleries.items():
        gallery_subject = dict(zip(gal_t.tolist(), gal_s.tolist()))
        cmc, tpir = naive_open_set({t: pooled[t] for t in gallery_subject}, gallery_subject, probes, probe_subject,
                                   fpirs, ranks)
        got = result.galleries[g]
        assert got.cmc == pytest.approx(cmc)
        np.testing.assert_allclose(got.tpir, tpir)
        n = int(got.mated.sum())
        assert n == sum(1 for s in probe_subject.values() if s in set(gallery_subject.values()))
        hits = {r: hits[r] + cmc[r] * n for r in ranks}
        mated += n
        tpirs.append(tpir)
    assert result.cmc == pytest.approx({r: hits[r] / mated for r in ranks})
    np.testing.assert_allclose(result.tpir, np.mean(tpirs, axis=0))


def test_tpir_at_fpir_by_hand() -> None:
    """4 non-mated searches with top scores .9 .5 .4 .1; 4 mated searches (score, rank-1?)."""
    nonmated = np.array([0.9, 0.5, 0.4, 0.1])
    mate = np.array([0.95, 0.6, 0.45, 0.8])
    rank1 = np.array([True, True, True, False])
    tpir, threshold, achieved = ijb.tpir_at_fpir(mate, rank1, nonmated, [0.1, 0.25, 0.5])
    # FPIR 0.1: < 1/4 -> not measurable. 0.25: one alarm allowed -> accept above 0.5 -> {0.95, 0.6} = 2/4.
    # 0.5: two alarms -> accept above 0.4 -> {0.95, 0.6, 0.45} (0.8 is not rank 1) = 3/4.
    assert np.isnan(tpir[0]) and tpir[1:].tolist() == [0.5, 0.75]
    assert achieved[1:].tolist() == [0.25, 0.5] and 0.5 < threshold[1] < 0.5 + 1e-12


def test_open_set_mated_and_nonmated_searches() -> None:
    """Two gallery subjects; a probe of an enrolled subject and one of a stranger, on unit vectors by hand."""
    gallery = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    probes = np.array([[0.8, 0.6, 0], [0.6, 0.8, 0], [0, 0.6, 0.8]])
    result = ijb.identify_open_set(gallery, np.array([7, 8]), probes, np.array([7, 7, 9]), ranks=[1, 2],
                                   fpir=[1.0])
    assert result.mated.tolist() == [True, True, False]
    assert result.ranks[:2].tolist() == [1, 2] and np.isnan(result.ranks[2])
    assert result.cmc == {1: 0.5, 2: 1.0}
    np.testing.assert_allclose(result.top_scores, [0.8, 0.8, 0.6], atol=1e-6)
    assert result.tpir.tolist() == [0.5]  # FPIR 1: any threshold; only the rank-1 probe counts


# ---------------------------------------------------------------------------------------------- errors


def test_reader_errors_name_the_problem(tmp_path: Path, release: tuple[Path, Truth]) -> None:
    with pytest.raises(FileNotFoundError, match="meta/ and loose_crop"):
        ijb.read_ijb(tmp_path)
    root, _ = release
    import shutil

    broken = tmp_path / "IJBC"
    shutil.copytree(root / "meta", broken / "meta")
    pairs = broken / "meta" / "ijbc_template_pair_label.txt"
    pairs.write_text(pairs.read_text() + "1 999999 0\n")
    with pytest.raises(ValueError, match="no image in face_tid_mid"):
        ijb.read_ijb(broken)
    pairs.write_text("1 2\n")
    with pytest.raises(ValueError, match="3 integers"):
        ijb.read_ijb(broken)
    pairs.write_text("1 2 x\n")
    with pytest.raises(ValueError, match="integers"):
        ijb.read_ijb(broken)
    tid = broken / "meta" / "ijbc_face_tid_mid.txt"
    tid.write_text("\n".join(tid.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(ValueError, match="same images"):
        ijb.read_ijb(broken, one_to_one=False)
    with pytest.raises(FileNotFoundError, match="no IJB release"):
        ijb.release_folders(tmp_path / "nothing")
    assert ijb.release_folders(root.parent) == [root]


def test_rows_of_table_and_search_paths() -> None:
    ids = np.array([3, 10, 11, 500])
    many = np.array([500, 3, 11, 10, 3, 500])  # more wanted than ids: lookup table
    np.testing.assert_array_equal(ijb.rows_of(ids, many), [3, 0, 2, 1, 0, 3])
    np.testing.assert_array_equal(ijb.rows_of(ids, np.array([11])), [2])  # binary search
    for wanted in (np.array([3, 4, 10, 11, 500]), np.array([600]), np.array([-1, 3, 3, 3, 3])):
        with pytest.raises(ValueError, match="no pooled feature"):
            ijb.rows_of(ids, wanted)


def test_ijbb_layout_and_one_to_one_only(tmp_path: Path) -> None:
    """IJB-B names its galleries S1/S2; without the 1:N files only 1:1 runs."""
    root = tmp_path / "IJBB"
    truth = write_synthetic_ijb(root, prefix="ijbb", num_subjects=4, seed=5)
    meta = ijb.read_ijb(root)
    assert meta.name == "IJB-B" and sorted(meta.galleries) == ["S1", "S2"]
    for f in (root / "meta").glob("*.csv"):
        f.unlink()
    meta = ijb.read_ijb(root)
    assert meta.probes is None and not meta.galleries
    features = np.random.default_rng(0).normal(size=(len(truth.names), 8)).astype(np.float32)
    result = ijb.evaluate_features(meta, features)
    assert result.identification is None and result.verification.num_pairs == len(truth.pairs)


def test_1n_csv_errors(tmp_path: Path) -> None:
    path = tmp_path / "g.csv"
    path.write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n5,1,a.jpg\n5,2,b.jpg\n")
    with pytest.raises(ValueError, match="template 5 is listed with two subjects"):
        ijb._read_1n_csv(path)
    path.write_text("T,S\n5,1\n")
    with pytest.raises(ValueError, match="TEMPLATE_ID and SUBJECT_ID"):
        ijb._read_1n_csv(path)
    path.write_text("SUBJECT_ID,TEMPLATE_ID\n7,5\n7,5\n9,6\n")  # columns found by name, not position
    templates, subjects = ijb._read_1n_csv(path)
    assert templates.tolist() == [5, 6] and subjects.tolist() == [7, 9]
