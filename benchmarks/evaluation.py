"""Evaluation speed: 10-fold verification vs a per-threshold loop; identification among 1M distractors.

Part 1 — 10-fold verification of 6,000 pairs (LFW's size) from 512-d embeddings. ``kfold_accuracy`` (sort once,
cumulative sums) against two baselines measured in the same run:
  * exact loop: the same candidate thresholds (every distinct score), each evaluated with a numpy pass over
    the training pairs, per fold — what a straightforward implementation does; results must be identical;
  * insightface loop: its ``calculate_roc`` style, 400 grid thresholds (distance 0..4 step 0.01) per fold.

Part 1b (``--parts grid``) — accuracy, not speed: the exact cut against insightface's 0.01 grid on the same
pairs, for synthetic sets from strong (~99%) to weak (~65%) models, 3 seeds each: where the two thresholds part.

Part 2 — identification: 1,000 identities (one gallery image each), 1,000 probes, N synthetic 512-d float32
distractors (default 1,000,000, added to the faiss index in 100k-row chunks so that only the index holds them:
2 GiB). For each index kind (default: exact flat, then IVF nlist=1024 nprobe=32): build time, ms per probe
(rank-10 search), rank-1, TAR@FAR=1e-6 over the probe x index pairs; peak RSS; and a numpy brute-force
top-10 (matmul per chunk) as the same-run baseline.

Part 3 -- IJB-C 1:1 at full size with synthetic vectors: 469,375 image embeddings (512-d float32) in 23,124
templates (1-4 media each), 15,658,489 template pairs of which 19,557 genuine (the sizes of the real
``ijbc_face_tid_mid.txt`` / ``ijbc_template_pair_label.txt``; first templates from 3,531 enrolment templates,
second from the other 19,593, as the 1:N gallery/probe split). Timed: ``ijb.pool_templates`` (media + template
pooling), ``ijb.verify_pairs`` (pair scores, ROC, AUC, TAR at six FARs). Baselines measured in the same run on a
slice and extrapolated linearly: a per-template loop (``np.where`` over all images per template, then per media:
the structure of insightface's ``image2template_feature``) and a per-pair Python loop of float64 dot products.

    python benchmarks/evaluation.py                        # full: ~10 minutes on 2 busy cores, ~4 GiB peak
    python benchmarks/evaluation.py --distractors 100000   # quick
    python benchmarks/evaluation.py --parts ijb            # part 3 only (~3 GiB peak)
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Iterator

import numpy as np

from marginface.evaluation import identification, metrics

DIM = 512
CHUNK = 100_000


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- part 1


def exact_loop(scores: np.ndarray, issame: np.ndarray, fold_ids: np.ndarray) -> np.ndarray:
    """Baseline: per fold, every distinct training score as a threshold, one numpy pass per threshold."""
    accs = []
    for fold in np.unique(fold_ids):
        tr_s, tr_y = scores[fold_ids != fold], issame[fold_ids != fold]
        cuts = np.r_[np.inf, np.unique(tr_s)[::-1]]
        best, best_k = -1.0, 0
        for k, t in enumerate(cuts):
            acc = np.mean((tr_s >= t) == tr_y)
            if acc > best:
                best, best_k = acc, k
        if best_k == 0:
            thr = np.inf
        elif best_k == cuts.size - 1:
            thr = -np.inf
        else:
            thr = cuts[best_k + 1] + (cuts[best_k] - cuts[best_k + 1]) / 2
        test = fold_ids == fold
        accs.append(np.mean((scores[test] >= thr) == issame[test]))
    return np.array(accs)


def insightface_loop(distances: np.ndarray, issame: np.ndarray, fold_ids: np.ndarray) -> np.ndarray:
    """Baseline: insightface's calculate_roc accuracy part (grid of 400 distance thresholds, loop per fold)."""
    thresholds = np.arange(0, 4, 0.01)
    accs = []
    for fold in np.unique(fold_ids):
        train, test = fold_ids != fold, fold_ids == fold
        train_acc = [np.mean((distances[train] < t) == issame[train]) for t in thresholds]
        t = thresholds[int(np.argmax(train_acc))]
        accs.append(np.mean((distances[test] < t) == issame[test]))
    return np.array(accs)


def _timed(fn, *args, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, out


def bench_kfold(num_pairs: int = 6000) -> None:
    rng = np.random.default_rng(0)
    issame = np.tile(np.repeat([True, False], num_pairs // 20), 10)  # 10 folds of 300 same + 300 different
    a = _unit(rng.normal(size=(num_pairs, DIM)))
    b = _unit(np.where(issame[:, None], a, 0) + 5.0 * _unit(rng.normal(size=(num_pairs, DIM))))
    scores = metrics.pair_scores(a, b)
    folds = metrics.contiguous_folds(num_pairs, 10)
    t_ours, ours = _timed(metrics.kfold_accuracy, scores, issame, folds, repeat=20)  # best of 20: busy CPUs
    t_exact, exact = _timed(exact_loop, scores, issame, folds, repeat=1)
    distances = np.sum((a.astype(np.float64) - b) ** 2, axis=1)  # squared L2 of unit rows, as insightface
    t_grid, grid = _timed(insightface_loop, distances, issame, folds, repeat=1)
    assert np.array_equal(ours.accuracies, exact), "vectorised and loop disagree"
    print(f"10-fold verification, {num_pairs} pairs (accuracy {100 * ours.mean:.2f} ± {100 * ours.std:.2f}%; "
          f"insightface grid {100 * grid.mean():.2f}%)")
    print(f"  kfold_accuracy (sort once)     {1000 * t_ours:9.2f} ms")
    print(f"  exact per-threshold loop       {1000 * t_exact:9.2f} ms   ours is {t_exact / t_ours:7.1f}x faster "
          "(identical accuracies)")
    print(f"  insightface 400-grid loop      {1000 * t_grid:9.2f} ms   ours is {t_grid / t_ours:7.1f}x faster")


def _pairs(num_pairs: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LFW-shaped synthetic pairs: a same pair's second row is its first plus ``noise`` x a random unit vector;
    returns the cosine scores, squared L2 distances (insightface's) and labels."""
    rng = np.random.default_rng(seed)
    issame = np.tile(np.repeat([True, False], num_pairs // 20), 10)  # 10 folds of 300 same + 300 different
    a = _unit(rng.normal(size=(num_pairs, DIM)))
    b = _unit(np.where(issame[:, None], a, 0) + noise * _unit(rng.normal(size=(num_pairs, DIM))))
    return metrics.pair_scores(a, b), np.sum((a.astype(np.float64) - b) ** 2, axis=1), issame


GRID_NOISES = (5.0, 8.0, 12.0, 16.0, 22.0)  # exact-cut accuracy ~99, ~92, ~83, ~76, ~69%


def grid_vs_exact(num_pairs: int = 6000, noises: tuple[float, ...] = GRID_NOISES) -> list[tuple[float, float, float]]:
    """(noise, exact-cut accuracy, insightface-grid accuracy) of 10-fold verification on the same synthetic pairs,
    3 seeds per noise level."""
    folds = metrics.contiguous_folds(num_pairs, 10)
    found = []
    for noise in noises:
        for seed in range(3):
            scores, distances, issame = _pairs(num_pairs, noise, seed)
            found.append((noise, metrics.kfold_accuracy(scores, issame, folds).mean,
                          float(insightface_loop(distances, issame, folds).mean())))
    return found


def print_grid_vs_exact(num_pairs: int = 6000) -> None:
    print(f"exact cut vs insightface's 0.01 grid, 10-fold, {num_pairs} synthetic pairs (points of accuracy)")
    found = grid_vs_exact(num_pairs)
    for noise, exact, grid in found:
        print(f"  noise {noise:4.1f}: exact {100 * exact:6.2f}%  grid {100 * grid:6.2f}%  grid - exact "
              f"{100 * (grid - exact):+.2f}")
    for low, high in ((0.95, 1.01), (0.0, 0.95)):
        band = [100 * (grid - exact) for _, exact, grid in found if low <= exact < high]
        print(f"  exact accuracy {100 * low:.0f}-{100 * min(high, 1.0):.0f}%: grid - exact from {min(band):+.2f} to "
              f"{max(band):+.2f} ({len(band)} sets)")


# ---------------------------------------------------------------------------------------------- part 2


def distractor_chunks(total: int, seed: int = 1, timer: list[float] | None = None) -> Iterator[np.ndarray]:
    """Deterministic (rows, 512) float32 unit-norm chunks: regenerated, never all held at once.

    ``timer[0]`` accumulates the generation time, so that it can be taken out of the index build time.
    """
    rng = np.random.default_rng(seed)
    for start in range(0, total, CHUNK):
        began = time.perf_counter()
        chunk = _unit(rng.standard_normal((min(CHUNK, total - start), DIM), dtype=np.float32))
        if timer is not None:
            timer[0] += time.perf_counter() - began
        yield chunk


def numpy_topk(gallery: np.ndarray, probes: np.ndarray, total: int, k: int) -> tuple[float, np.ndarray]:
    """Baseline: brute-force top-k scores by numpy matmul + argpartition per chunk (generation not timed)."""
    best = probes @ gallery.T
    best = -np.sort(-best, axis=1)[:, :k]
    seconds = 0.0
    for chunk in distractor_chunks(total):
        start = time.perf_counter()
        sim = probes @ chunk.T
        part = np.partition(sim, sim.shape[1] - k, axis=1)[:, -k:]
        best = -np.sort(-np.concatenate([best, part], axis=1), axis=1)[:, :k]
        seconds += time.perf_counter() - start
    return seconds, best


def bench_index(gallery: np.ndarray, probes: np.ndarray, num_distractors: int, kind: str) -> float:
    """One index kind: build, rank-10 search, TAR@FAR=1e-6; returns ms per probe."""
    labels = np.arange(gallery.shape[0])
    generation = [0.0]
    options = {"nlist": 1024, "nprobe": 32} if kind == "ivf" else {}
    report = identification.megaface_report(gallery, labels, probes, labels,
                                            distractor_chunks(num_distractors, timer=generation),
                                            kind=kind, far=[1e-6], max_rank=10, **options)
    ms = report.identification.ms_per_probe
    print(f"  [{kind}{' nlist=1024 nprobe=32' if kind == 'ivf' else ''}] build "
          f"{report.build_seconds - generation[0]:.1f} s (+ {generation[0]:.1f} s generating rows), "
          f"search {ms:.3f} ms/probe (rank-10)")
    print(f"    {report.summary()}")
    return ms


def bench_identification(num_distractors: int, kinds: list[str], num_ids: int = 1000) -> None:
    rng = np.random.default_rng(2)
    centres = _unit(rng.normal(size=(num_ids, DIM)))
    gallery = _unit(centres + 1.6 * _unit(rng.normal(size=(num_ids, DIM))))
    probes = _unit(centres + 1.6 * _unit(rng.normal(size=(num_ids, DIM))))
    print(f"identification, {num_ids} probes, gallery {num_ids} + {num_distractors:,} distractors "
          f"({num_distractors * DIM * 4 / 2**30:.2f} GiB of float32 rows)")
    timings = {kind: bench_index(gallery, probes, num_distractors, kind) for kind in kinds}
    print(f"  peak RSS {_peak_rss_gib():.2f} GiB")
    seconds, _ = numpy_topk(gallery, probes, num_distractors, 10)
    np_ms = 1000 * seconds / num_ids
    ratios = ", ".join(f"{kind} {np_ms / ms:.1f}x" for kind, ms in timings.items())
    print(f"  numpy brute-force top-10 (baseline) {np_ms:.3f} ms/probe; speed-up vs baseline: {ratios}")


# ---------------------------------------------------------------------------------------------- part 3

IJBC_IMAGES, IJBC_TEMPLATES, IJBC_PAIRS, IJBC_GENUINE, IJBC_GALLERY = 469_375, 23_124, 15_658_489, 19_557, 3_531
NOISE = 0.35  # per-dimension image noise around a unit subject centre: pooled templates still overlap at low FAR


def _scale_ijbc(fraction: float) -> None:
    """Shrink part 3's sizes (a quick run; the ratios hold the real file's shape)."""
    global IJBC_IMAGES, IJBC_TEMPLATES, IJBC_PAIRS, IJBC_GENUINE, IJBC_GALLERY
    IJBC_IMAGES, IJBC_TEMPLATES, IJBC_PAIRS, IJBC_GENUINE, IJBC_GALLERY = (
        max(int(n * fraction), 10) for n in (IJBC_IMAGES, IJBC_TEMPLATES, IJBC_PAIRS, IJBC_GENUINE, IJBC_GALLERY))


def synthetic_ijbc(seed: int = 3) -> tuple[np.ndarray, ...]:
    """(N, 512) features, (N,) templates, (N,) medias, (N,) face scores, (P, 2) template pairs, (P,) labels."""
    rng = np.random.default_rng(seed)
    subject = np.r_[np.arange(IJBC_GALLERY), rng.integers(0, IJBC_GALLERY, IJBC_TEMPLATES - IJBC_GALLERY)]
    templates = np.r_[np.arange(IJBC_TEMPLATES), rng.integers(0, IJBC_TEMPLATES, IJBC_IMAGES - IJBC_TEMPLATES)]
    medias = templates * 4 + rng.integers(0, 4, IJBC_IMAGES)
    centres = _unit(rng.standard_normal((IJBC_GALLERY, DIM), dtype=np.float32))
    features = np.empty((IJBC_IMAGES, DIM), np.float32)
    for start in range(0, IJBC_IMAGES, CHUNK):
        rows = slice(start, start + CHUNK)
        noise = rng.standard_normal((len(templates[rows]), DIM), dtype=np.float32)
        features[rows] = centres[subject[templates[rows]]] + NOISE * noise
    scores = rng.uniform(0.5, 1.0, IJBC_IMAGES).astype(np.float32)
    probe = np.arange(IJBC_GALLERY, IJBC_TEMPLATES)
    genuine_probe = rng.choice(probe, IJBC_GENUINE, replace=False)
    genuine = np.stack([subject[genuine_probe], genuine_probe], axis=1)  # enrolment template id = subject id
    num_impostor = IJBC_PAIRS - IJBC_GENUINE
    impostor = np.stack([rng.integers(0, IJBC_GALLERY, num_impostor), rng.choice(probe, num_impostor)], axis=1)
    clash = subject[impostor[:, 1]] == impostor[:, 0]
    impostor[clash, 0] = (impostor[clash, 0] + 1) % IJBC_GALLERY
    pairs = np.concatenate([genuine, impostor])
    issame = np.r_[np.ones(IJBC_GENUINE, bool), np.zeros(num_impostor, bool)]
    order = rng.permutation(IJBC_PAIRS)
    return features, templates, medias, scores, pairs[order], issame[order]


def naive_pool_loop(features: np.ndarray, templates: np.ndarray, medias: np.ndarray, scores: np.ndarray,
                    wanted: np.ndarray) -> np.ndarray:
    """Baseline: per template, find its images (np.where over all), per media average, sum, normalise; float64."""
    out = np.empty((wanted.size, features.shape[1]))
    for k, t in enumerate(wanted):
        (rows,) = np.where(templates == t)
        feats = features[rows].astype(np.float64) * scores[rows, None]
        media_feats = [feats[medias[rows] == m].mean(axis=0) for m in np.unique(medias[rows])]
        total = np.sum(media_feats, axis=0)
        out[k] = total / np.sqrt(np.sum(total**2))
    return out


def bench_ijbc(slice_templates: int = 200, slice_pairs: int = 20_000) -> None:
    from marginface.evaluation import ijb

    start = time.perf_counter()
    features, templates, medias, scores, pairs, issame = synthetic_ijbc()
    print(f"IJB-C 1:1 size: {IJBC_IMAGES:,} images x {DIM}, {IJBC_TEMPLATES:,} templates, {IJBC_PAIRS:,} pairs "
          f"({IJBC_GENUINE:,} genuine); synthetic data made in {time.perf_counter() - start:.1f} s")
    t_pool, (ids, pooled) = _timed(ijb.pool_templates, features, templates, medias, scores, repeat=1)
    start = time.perf_counter()
    rows = ijb.rows_of(ids, pairs.ravel()).reshape(-1, 2)
    pair_scores = ijb.pair_cosines(pooled, rows[:, 0], rows[:, 1])
    t_scores = time.perf_counter() - start
    t_metrics, report = _timed(ijb.verify_pairs, ids, pooled, pairs, issame, repeat=1)  # scores again + metrics
    t_metrics -= t_scores
    assert np.array_equal(pair_scores, report.scores)
    tars = ", ".join(f"{f:.0e}: {100 * t:.2f}%" for f, t in zip(report.tar_at_far.far, report.tar_at_far.tar))
    print(f"  ours: pooling {t_pool:.2f} s + pair scores {t_scores:.2f} s = {t_pool + t_scores:.2f} s; "
          f"ROC/AUC/TAR@FAR over all pairs {t_metrics:.2f} s more (AUC {report.auc:.4f}; TAR@FAR {tars})")
    wanted = ids[:slice_templates]
    t_naive_pool, naive = _timed(naive_pool_loop, features, templates, medias, scores, wanted, repeat=1)
    pool_diff = float(np.abs(naive - pooled[:slice_templates]).max())
    naive_pool_total = t_naive_pool * IJBC_TEMPLATES / slice_templates
    row_of = {int(t): k for k, t in enumerate(ids)}
    lookup = pooled.astype(np.float64)
    start = time.perf_counter()
    loop_scores = np.array([float(np.dot(lookup[row_of[a]], lookup[row_of[b]])) for a, b in pairs[:slice_pairs]])
    t_naive_pairs = (time.perf_counter() - start) * IJBC_PAIRS / slice_pairs
    score_diff = float(np.abs(loop_scores - report.scores[:slice_pairs]).max())
    naive_total = naive_pool_total + t_naive_pairs
    print(f"  naive loops (extrapolated from {slice_templates} templates / {slice_pairs:,} pairs): pooling "
          f"{naive_pool_total:.0f} s + pair scores {t_naive_pairs:.0f} s = {naive_total:.0f} s -> ours is "
          f"{naive_pool_total / t_pool:.0f}x / {t_naive_pairs / t_scores:.0f}x / "
          f"{naive_total / (t_pool + t_scores):.0f}x faster (pooling / scores / both)")
    print(f"  agreement on the slices: pooled features max |diff| {pool_diff:.1e}, pair scores {score_diff:.1e}")
    print(f"  peak RSS {_peak_rss_gib():.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distractors", type=int, default=1_000_000)
    parser.add_argument("--kinds", default="flat,ivf", help="comma-separated index kinds: flat, ivf, hnsw "
                        "(hnsw over 1M rows takes long to build on 2 cores)")
    parser.add_argument("--pairs", type=int, default=6000)
    parser.add_argument("--parts", default="kfold,grid,identification,ijb", help="comma-separated parts to run")
    parser.add_argument("--ijb-scale", type=float, default=1.0,
                        help="part 3 at this fraction of IJB-C's size (images, templates, pairs; 1 = full)")
    args = parser.parse_args()
    parts = args.parts.split(",")
    if "kfold" in parts:
        bench_kfold(args.pairs)
    if "grid" in parts:
        print_grid_vs_exact(args.pairs)
    if "identification" in parts:
        # faiss grows its storage by doubling while adding: the peak is about twice the rows' 2 GiB (1M x 512)
        print(f"(needs about {2 * args.distractors * DIM * 4 / 2**30 + 0.5:.1f} GiB of memory)")
        bench_identification(args.distractors, args.kinds.split(","))
    if "ijb" in parts:
        if args.ijb_scale != 1.0:
            _scale_ijbc(args.ijb_scale)
        bench_ijbc()


if __name__ == "__main__":
    main()
