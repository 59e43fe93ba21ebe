"""IJB-B / IJB-C template protocols: 1:1 verification (TAR at FAR, ROC) and 1:N open-set identification.

Data layout (the release insightface's IJB evaluation reads; file formats from its ``recognition/_evaluation_/ijb``
scripts ``ijb_11.py``, ``ijb_1n.py``, ``ijb_evals.py`` and the IJB-B/C papers -- Whitelam et al. CVPRW 2017,
Maze et al. ICB 2018; see docs/evaluation.md)::

    DIR/loose_crop/<name>.jpg                      loose face crops
    DIR/meta/<p>_name_5pts_score.txt               "<name> x1 y1 ... x5 y5 <detector score>", one line per image
    DIR/meta/<p>_face_tid_mid.txt                  "<name> <template id> <media id>", same images
    DIR/meta/<p>_template_pair_label.txt           "<template 1> <template 2> <1 same | 0 different>"
    DIR/meta/<p>_1N_gallery_{G1,G2}.csv (IJB-C)    header + "TEMPLATE_ID,SUBJECT_ID,FILENAME,..." rows,
    DIR/meta/<p>_1N_gallery_{S1,S2}.csv (IJB-B)    one per image of the template
    DIR/meta/<p>_1N_probe_mixed.csv                same columns, the probe templates

``<p>`` is ``ijbb`` or ``ijbc``. The five points are in ArcFace order (eyes, nose, mouth corners; image left first).

Pipeline (insightface's defaults, each a named option of :class:`PoolingOptions`):

1. every image is warped onto the ArcFace template from its five points (``align.template.warp_face``);
2. embedding = ``model(x) + model(mirror(x))`` (flip TTA), *not* normalised -- the feature norm acts as a quality
   weight -- and multiplied by the detector score;
3. media pooling: the images of one media (the frames of one video) inside a template are averaged;
4. template pooling: the media features are summed and the sum is L2-normalised;
5. 1:1: cosine of the two templates of each pair; ROC, AUC, TAR at FAR 1e-6 ... 1e-1 (``metrics.tar_at_far``);
6. 1:N: each probe template is searched in gallery G1 and in G2 (exact faiss inner-product index); see
   :func:`identify_open_set` for the (corrected) TPIR/FPIR definition.
"""

from __future__ import annotations

import csv
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from marginface.evaluation import metrics
from marginface.evaluation.embed import embed_batches

#: the 1:N gallery file suffixes of each release (IJB-B calls its two galleries S1/S2, IJB-C G1/G2).
GALLERIES = {"ijbb": ("S1", "S2"), "ijbc": ("G1", "G2")}
DEFAULT_FPIRS: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
DEFAULT_RANKS: tuple[int, ...] = (1, 5, 10)


# ---------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class IJBMeta:
    """The meta files of one IJB release, images in ``name_5pts_score`` order.

    Attributes:
        name: ``"IJB-B"`` or ``"IJB-C"``.
        root: the release folder (holding ``meta/`` and ``loose_crop/``).
        images: (N,) image file names, relative to ``root/loose_crop``.
        landmarks: (N, 5, 2) float32 five points, pixels of the loose crop.
        face_scores: (N,) float32 detector scores.
        templates: (N,) int64 template of each image.
        medias: (N,) int64 media (photo or video) of each image.
        pairs: (P, 2) int64 template ids of the 1:1 pairs.
        issame: (P,) bool pair labels.
        galleries: 1:N gallery name -> ((G,) template ids, (G,) subject ids), one row per template; may be empty.
        probes: ((Q,) template ids, (Q,) subject ids) of the 1:N probes, or None.
    """

    name: str
    root: Path
    images: np.ndarray
    landmarks: np.ndarray
    face_scores: np.ndarray
    templates: np.ndarray
    medias: np.ndarray
    pairs: np.ndarray
    issame: np.ndarray
    galleries: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    probes: tuple[np.ndarray, np.ndarray] | None = None


def _prefix(meta_dir: Path) -> str:
    found = [p for p in GALLERIES if (meta_dir / f"{p}_face_tid_mid.txt").is_file()]
    if len(found) != 1:
        raise FileNotFoundError(f"{meta_dir} must hold exactly one of ijbb_face_tid_mid.txt / ijbc_face_tid_mid.txt "
                                f"(the IJB meta files), found {len(found)}")
    return found[0]


def _int_table(path: Path, columns: int) -> np.ndarray:
    """A whitespace-separated table of integers -> (rows, columns) int64; fast for 15M-line pair files."""
    if not path.is_file():
        raise FileNotFoundError(f"IJB meta file {path} does not exist")
    data = path.read_bytes()
    data = data.rstrip()  # trailing newlines / blank lines
    lines = data.count(b"\n") + 1 if data else 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy warns (not raises) on a token it cannot parse
            values = np.fromstring(data, dtype=np.int64, sep=" ")  # text mode: numpy's fastest integer parser
    except (ValueError, DeprecationWarning) as err:
        raise ValueError(f"{path}: expected lines of {columns} integers ({err})") from err
    if values.size != lines * columns:
        raise ValueError(f"{path}: expected {columns} integers on each of {lines} lines, got {values.size} in all; "
                         "check the file")
    return values.reshape(lines, columns)


def _name_table(path: Path, numeric_columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Lines ``<name> v1 ... vK`` -> ((N,) names, (N, K) float64)."""
    if not path.is_file():
        raise FileNotFoundError(f"IJB meta file {path} does not exist")
    names, rows = [], []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != numeric_columns + 1:
                raise ValueError(f"{path}:{number}: expected a name and {numeric_columns} numbers, got {line!r}")
            names.append(fields[0])
            rows.append(fields[1:])
    try:
        values = np.array(rows, dtype=np.float64).reshape(len(names), numeric_columns)
    except ValueError as err:
        raise ValueError(f"{path}: a value is not a number ({err})") from err
    return np.array(names), values


def _read_1n_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 1:N gallery/probe CSV -> ((T,) template ids, (T,) subject ids), one row per template (first occurrence).

    Columns are found by the header names TEMPLATE_ID and SUBJECT_ID (the official header; insightface reads
    columns 0 and 1 after skipping it).
    """
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip().upper() for h in next(reader, [])]
        if "TEMPLATE_ID" not in header or "SUBJECT_ID" not in header:
            raise ValueError(f"{path}: the header must name TEMPLATE_ID and SUBJECT_ID, got {header[:4]}")
        t_col, s_col = header.index("TEMPLATE_ID"), header.index("SUBJECT_ID")
        try:
            rows = np.array([(int(r[t_col]), int(r[s_col])) for r in reader if r], dtype=np.int64).reshape(-1, 2)
        except (ValueError, IndexError) as err:
            raise ValueError(f"{path}: a row lacks an integer TEMPLATE_ID/SUBJECT_ID ({err})") from err
    templates, first, inverse = np.unique(rows[:, 0], return_index=True, return_inverse=True)
    subjects = rows[first, 1]
    clash = np.flatnonzero(rows[:, 1] != subjects[inverse])
    if clash.size:
        t = rows[clash[0], 0]
        raise ValueError(f"{path}: template {t} is listed with two subjects ({subjects[inverse[clash[0]]]}, "
                         f"{rows[clash[0], 1]})")
    return templates, subjects


def read_ijb(root: str | Path, *, one_to_one: bool = True, one_to_n: bool = True) -> IJBMeta:
    """Read an IJB release folder (``root/meta``, ``root/loose_crop``); see the module docstring for the files.

    The 1:N files are optional (absent -> no galleries). Raises FileNotFoundError naming a missing file,
    ValueError naming a malformed line or an inconsistency (images of the two image lists differ, a pair or
    1:N template that has no image).
    """
    root = Path(root)
    meta = root / "meta"
    if not meta.is_dir():
        raise FileNotFoundError(f"{meta} does not exist: give an IJB release folder, one holding meta/ and "
                                "loose_crop/ (e.g. IJB_release/IJBC)")
    p = _prefix(meta)
    names, values = _name_table(meta / f"{p}_name_5pts_score.txt", 11)
    tid_names, tid = _name_table(meta / f"{p}_face_tid_mid.txt", 2)
    if names.shape != tid_names.shape or not np.array_equal(names, tid_names):
        raise ValueError(f"{meta}: {p}_name_5pts_score.txt and {p}_face_tid_mid.txt must list the same images "
                         f"in the same order ({names.size} and {tid_names.size} lines)")
    templates = tid[:, 0].astype(np.int64)
    pairs, issame = np.zeros((0, 2), np.int64), np.zeros(0, bool)
    if one_to_one:
        table = _int_table(meta / f"{p}_template_pair_label.txt", 3)
        pairs, labels = table[:, :2], table[:, 2]
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"{meta}/{p}_template_pair_label.txt: labels must be 0 or 1")
        issame = labels.astype(bool)
        _check_templates_known(pairs.ravel(), templates, f"{p}_template_pair_label.txt")
    galleries, probes = {}, None
    files = [meta / f"{p}_1N_gallery_{g}.csv" for g in GALLERIES[p]] + [meta / f"{p}_1N_probe_mixed.csv"]
    if one_to_n and all(f.is_file() for f in files):
        for g, f in zip(GALLERIES[p], files):
            galleries[g] = _read_1n_csv(f)
            _check_templates_known(galleries[g][0], templates, f.name)
        probes = _read_1n_csv(files[-1])
        _check_templates_known(probes[0], templates, files[-1].name)
    return IJBMeta("IJB-B" if p == "ijbb" else "IJB-C", root, names, values[:, :10].reshape(-1, 5, 2).astype(
        np.float32), values[:, 10].astype(np.float32), templates, tid[:, 1].astype(np.int64), pairs, issame,
        galleries, probes)


def _check_templates_known(ids: np.ndarray, templates: np.ndarray, what: str) -> None:
    unknown = np.setdiff1d(ids, templates)
    if unknown.size:
        raise ValueError(f"{what} names {unknown.size} templates with no image in face_tid_mid "
                         f"(first: {unknown[:5].tolist()})")


# ---------------------------------------------------------------------------------------------- embedding


@dataclass(frozen=True)
class PoolingOptions:
    """How image embeddings become template features (insightface's default: flip on, norms kept, detector
    score on -- its ``N0D1F1``/``ijb_11.py`` default).

    Attributes:
        flip: embed the image and its mirror and sum the two raw embeddings.
        normalize_images: L2-normalise each image embedding before pooling (insightface's ``N1``); off keeps the
            norm as a per-image quality weight.
        detector_score: multiply each image embedding by its detector score (``D1``).
    """

    flip: bool = True
    normalize_images: bool = False
    detector_score: bool = True


class _AlignedCrops(torch.utils.data.Dataset):
    """Loose crops warped to 112x112 from the given five points -> (3, 112, 112) float32 in [-1, 1], RGB."""

    def __init__(self, folder: Path, names: np.ndarray, landmarks: np.ndarray) -> None:
        self.folder, self.names, self.landmarks = folder, names, landmarks

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(align_crop(self.folder / str(self.names[i]), self.landmarks[i]))


def align_crop(path: str | Path, landmarks: np.ndarray) -> np.ndarray:
    """Read one loose crop (RGB) and warp it onto the ArcFace template: (3, 112, 112) float32 in [-1, 1]."""
    from PIL import Image

    from marginface.align.template import warp_face

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IJB image {path} does not exist")
    with Image.open(path) as opened:
        image = np.asarray(opened.convert("RGB"))
    crop = warp_face(image, landmarks)
    return np.ascontiguousarray(crop.transpose(2, 0, 1), dtype=np.float32) / 127.5 - 1.0


def embed_images(
    model: nn.Module, meta: IJBMeta, *, flip: bool = True, batch_size: int = 128, device: str | torch.device = "cpu",
    workers: int = 0,
) -> np.ndarray:
    """Raw (un-normalised) embeddings of every image of ``meta``: (N, D) float32, flip-summed when ``flip``
    (``evaluation.embed.embed_batches`` with ``normalize=False``)."""
    crops = _AlignedCrops(meta.root / "loose_crop", meta.images, meta.landmarks)
    loader = torch.utils.data.DataLoader(crops, batch_size=batch_size, num_workers=workers, shuffle=False)
    return embed_batches(model, loader, flip=flip, device=device, total=len(crops), desc=f"embed {meta.name}",
                         normalize=False)


# ---------------------------------------------------------------------------------------------- pooling


def pool_templates(
    features: np.ndarray, templates: np.ndarray, medias: np.ndarray, face_scores: np.ndarray | None = None,
    options: PoolingOptions = PoolingOptions(),
) -> tuple[np.ndarray, np.ndarray]:
    """Media then template pooling, vectorised: ``(template ids (T,) sorted, (T, D) float32 unit rows)``.

    Template ``t``'s feature is ``normalise(sum over its media m of mean over m's images in t of f_i)`` with
    ``f_i`` the image embedding (optionally L2-normalised, optionally times the detector score). Since a media's
    mean is a sum weighted by ``1/count``, the whole thing is one sparse (T x N) by dense (N x D) product (torch
    CSR, float32 accumulation; checked against a float64 loop to 1e-6 in the tests), whatever the number of
    templates.

    Args:
        features: (N, D) image embeddings.
        templates: (N,) template id of each image; medias: (N,) media id; face_scores: (N,) detector scores
            (needed when ``options.detector_score``).
    """
    x = np.asarray(features)
    t, m = np.asarray(templates, np.int64), np.asarray(medias, np.int64)
    if x.ndim != 2 or t.shape != (x.shape[0],) or m.shape != t.shape:
        raise ValueError(f"features must be (N, D) with (N,) templates and medias; got {x.shape}, {t.shape}, "
                         f"{m.shape}")
    weight = np.ones(x.shape[0])
    if options.normalize_images:
        norms = np.linalg.norm(x, axis=1)
        if (norms == 0).any():
            raise ValueError("an image embedding is all zeros: cannot normalise it")
        weight /= norms
    if options.detector_score:
        if face_scores is None or np.shape(face_scores) != t.shape:
            raise ValueError("detector_score pooling needs (N,) face_scores")
        weight *= np.asarray(face_scores, np.float64)
    template_ids, t_row = np.unique(t, return_inverse=True)
    media_ids, m_row = np.unique(m, return_inverse=True)
    # a media is pooled inside each template separately: group by the (template, media) pair
    _, group, group_size = np.unique(t_row * media_ids.size + m_row, return_inverse=True, return_counts=True)
    weight /= group_size[group]
    # the pooling matrix A (T x N): A[t(i), i] = weight_i; template features = A @ x, one sparse-dense product
    order = np.argsort(t_row, kind="stable")
    crow = np.r_[0, np.cumsum(np.bincount(t_row, minlength=template_ids.size))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: "sparse CSR support is in beta"
        values = torch.from_numpy(weight[order].astype(np.float32))
        a = torch.sparse_csr_tensor(torch.from_numpy(crow), torch.from_numpy(order), values,
                                    size=(template_ids.size, t.size))
        pooled = (a @ torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
    norms = np.linalg.norm(pooled.astype(np.float64), axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("a template's pooled feature is all zeros (all its detector scores 0?)")
    return template_ids, (pooled / norms).astype(np.float32)


def rows_of(template_ids: np.ndarray, wanted: np.ndarray, what: str = "templates") -> np.ndarray:
    """Row of each wanted template id in the sorted ``template_ids`` (ValueError naming unknown ids)."""
    wanted = np.asarray(wanted, np.int64)
    if template_ids.size and template_ids[0] >= 0 and template_ids[-1] < 1 << 26 and wanted.size > template_ids.size:
        table = np.zeros(int(template_ids[-1]) + 1, np.int64)  # ids are small integers: a table beats a search
        table[template_ids] = np.arange(template_ids.size)
        rows = table[np.clip(wanted, 0, table.size - 1)]
    else:
        rows = np.minimum(np.searchsorted(template_ids, wanted), template_ids.size - 1)
    missing = template_ids[rows] != wanted
    if missing.any():
        raise ValueError(f"{what}: {int(missing.sum())} template ids have no pooled feature "
                         f"(first: {wanted[missing][:5].tolist()})")
    return rows


# ---------------------------------------------------------------------------------------------- 1:1


def pair_cosines(features: np.ndarray, rows1: np.ndarray, rows2: np.ndarray, block: int = 1024) -> np.ndarray:
    """(P,) float32 inner products ``features[rows1] . features[rows2]`` of unit rows.

    IJB pair lists are a dense part of (enrol templates) x (verify templates): with ``U1`` distinct first and
    ``U2`` distinct second templates, ``U1 * U2`` is a few times the number of pairs, so the scores are read from
    ``block``-row slices of the ``U1 x U2`` matrix product (BLAS) instead of gathering two rows per pair. When the
    pairs are sparse in that product (``U1 * U2 > 8 P``), rows are gathered and multiplied in chunks instead.
    """
    f = np.ascontiguousarray(features, dtype=np.float32)
    r1, r2 = np.asarray(rows1, np.int64), np.asarray(rows2, np.int64)
    u1, i1 = _compact(r1, f.shape[0])
    u2, i2 = _compact(r2, f.shape[0])
    out = np.empty(r1.size, np.float32)
    if u1.size * u2.size > 8 * max(r1.size, 1):
        for start in range(0, r1.size, 65536):
            s = slice(start, start + 65536)
            out[s] = np.einsum("nd,nd->n", f[r1[s]], f[r2[s]])
        return out
    right = f[u2].T.copy()
    block_of = i1 // block
    for b in range(int(block_of.max(initial=-1)) + 1):  # a few blocks: one pass over the pairs each, no sort
        sel = np.flatnonzero(block_of == b)
        sim = f[u1[b * block : (b + 1) * block]] @ right
        out[sel] = sim[i1[sel] - b * block, i2[sel]]
    return out


def _compact(rows: np.ndarray, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(rows, return_inverse=True)`` for rows in [0, num_rows), by counting instead of sorting."""
    present = np.bincount(rows, minlength=num_rows) > 0
    used = np.flatnonzero(present)
    position = np.cumsum(present) - 1
    return used, position[rows]


@dataclass(frozen=True)
class VerificationReport:
    """1:1 template verification.

    Attributes:
        tar_at_far: TAR at the FAR targets (``metrics.tar_at_far``: the best TAR with measured FAR <= target).
        auc: area under the ROC.
        roc: ``(fpr, tpr, thresholds)`` at every distinct score.
        num_pairs / num_genuine: sizes.
        scores: (P,) the pair scores (cosines), in pair-file order.
    """

    tar_at_far: metrics.TarAtFar
    auc: float
    roc: tuple[np.ndarray, np.ndarray, np.ndarray]
    num_pairs: int
    num_genuine: int
    scores: np.ndarray


def verify_pairs(template_ids: np.ndarray, template_features: np.ndarray, pairs: np.ndarray, issame: np.ndarray,
                 far: Sequence[float] = metrics.DEFAULT_FARS) -> VerificationReport:
    """Score the (P, 2) template pairs and compute TAR at FAR, the ROC and its AUC."""
    rows = rows_of(template_ids, np.asarray(pairs).ravel(), "template pairs").reshape(-1, 2)
    scores = pair_cosines(template_features, rows[:, 0], rows[:, 1])
    fpr, tpr, thresholds = metrics.roc(scores, issame)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    return VerificationReport(metrics.tar_at_far(scores, issame, far), area, (fpr, tpr, thresholds),
                              int(len(scores)), int(np.sum(issame)), scores)


# ---------------------------------------------------------------------------------------------- 1:N


@dataclass(frozen=True)
class OpenSetResult:
    """1:N search of every probe in one gallery.

    Attributes:
        ranks: (Q,) 1-based rank of the mate among the gallery's templates for mated probes (ties against the
            probe; ``inf`` beyond the searched top k), NaN for non-mated probes (subject not enrolled).
        mate_scores: (Q,) score of the best mate template (NaN for non-mated probes or a mate beyond top k).
        top_scores: (Q,) the highest score of each search (any template).
        mated: (Q,) bool, the probe's subject is in this gallery.
        cmc: {rank: fraction of mated searches with the mate within that rank}.
        fpir: (F,) FPIR targets; tpir: (F,) TPIR (rank 1) at each (NaN below 1/non-mated searches);
        threshold: (F,) the score threshold of each operating point; achieved_fpir: (F,) the FPIR reached there.
    """

    ranks: np.ndarray
    mate_scores: np.ndarray
    top_scores: np.ndarray
    mated: np.ndarray
    cmc: dict[int, float]
    fpir: np.ndarray
    tpir: np.ndarray
    threshold: np.ndarray
    achieved_fpir: np.ndarray


def tpir_at_fpir(mate_scores: np.ndarray, rank1: np.ndarray, nonmated_top: np.ndarray,
                 fpir: Sequence[float] = DEFAULT_FPIRS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TPIR (rank 1) at each FPIR target: ``(tpir, threshold, achieved_fpir)``, each (F,).

    FPIR(t) = fraction of non-mated searches whose top score is ``>= t``; TPIR(t) = fraction of mated searches
    whose mate is at rank 1 *and* scores ``>= t``. The operating point for a target is the one with the highest
    TPIR whose FPIR is ``<= target`` (at most ``floor(target * non-mated)`` false alarms; the same rule as
    ``metrics.tar_at_far``); the threshold is the float just above the (that+1)-th highest non-mated top score.
    Targets below ``1 / non-mated searches`` are NaN.
    """
    mate, ok, top = (np.asarray(a) for a in (mate_scores, rank1, nonmated_top))
    targets = np.atleast_1d(np.asarray(fpir, np.float64))
    if top.size == 0 or mate.size == 0:
        raise ValueError("TPIR at FPIR needs both mated and non-mated searches")
    top_desc = np.sort(top.astype(np.float64))[::-1]
    allowed = np.floor(targets * top.size + 1e-9).astype(np.int64)
    tpir, threshold, achieved = (np.full(targets.shape, np.nan) for _ in range(3))
    for k in np.flatnonzero(allowed >= 1):  # a handful of targets
        cut = top_desc[allowed[k]] if allowed[k] < top.size else -np.inf
        threshold[k] = np.nextafter(cut, np.inf)  # accept iff score > cut  <=>  score >= threshold
        tpir[k] = np.mean(ok & (mate > cut))
        achieved[k] = np.mean(top > cut)
    return tpir, threshold, achieved


def identify_open_set(
    gallery_features: np.ndarray, gallery_subjects: np.ndarray, probe_features: np.ndarray,
    probe_subjects: np.ndarray, *, ranks: Sequence[int] = DEFAULT_RANKS, fpir: Sequence[float] = DEFAULT_FPIRS,
) -> OpenSetResult:
    """Search every probe in one gallery (exact faiss inner-product index over unit rows).

    Definition (the NIST one: Grother et al., FRVT Part 2 / NISTIR 8238, used by the IJB-C paper): probes whose
    subject is not in this gallery are *non-mated* searches and only they define FPIR (top score above the
    threshold = a false alarm); TPIR counts mated searches whose mate is at rank 1 above the threshold; rank-k
    (CMC) is over the mated searches. This is what insightface's ``ijb_evals.py`` computes since its fix of
    2021 (PR #1739); its older ``ijb_1n.py`` took the threshold from *all* probe-vs-non-mate scores with
    ``ceil(probes * FPIR)`` false accepts -- a 1:1 FAR over impostor pairs, not an FPIR.
    """
    from marginface.evaluation.identification import GalleryIndex

    g_sub = np.asarray(gallery_subjects, np.int64)
    p_sub = np.asarray(probe_subjects, np.int64)
    index = GalleryIndex(np.asarray(gallery_features).shape[1], "flat")
    index.add(gallery_features, g_sub)
    k = min(max(max(ranks), 1), len(index))
    scores, labels = index.search(probe_features, k)
    mated = np.isin(p_sub, g_sub)
    rank = metrics.ranks_from_topk(scores, labels, p_sub)  # inf when the mate is not among the top k
    mate_hit = labels == p_sub[:, None]
    mate_scores = np.where(mate_hit.any(axis=1), np.where(mate_hit, scores, -np.inf).max(axis=1), np.nan)
    if not mated.any():
        raise ValueError("no probe's subject is in the gallery: no mated searches")
    cmc = {int(r): float(np.mean(rank[mated] <= r)) for r in ranks}
    top = scores[:, 0].astype(np.float64)
    rank1 = rank[mated] == 1
    if (~mated).any():
        tpir, threshold, achieved = tpir_at_fpir(mate_scores[mated], rank1, top[~mated], fpir)
    else:
        tpir = threshold = achieved = np.full(len(fpir), np.nan)
    return OpenSetResult(np.where(mated, rank, np.nan), np.where(mated, mate_scores, np.nan), top, mated, cmc,
                         np.asarray(fpir, np.float64), tpir, threshold, achieved)


@dataclass(frozen=True)
class IdentificationReport:
    """1:N over the release's two galleries, combined as the literature reports them.

    ``galleries`` holds each gallery's :class:`OpenSetResult`; ``cmc`` pools the mated searches of both galleries
    (each probe is mated in exactly one of them in IJB-B/C, so this equals insightface's
    ``(hits G1 + hits G2) / probes``); ``tpir`` is the mean of the two galleries' TPIR at each FPIR.
    """

    galleries: dict[str, OpenSetResult]
    cmc: dict[int, float]
    fpir: np.ndarray
    tpir: np.ndarray


def identify_galleries(template_ids: np.ndarray, template_features: np.ndarray, meta: IJBMeta, *,
                       ranks: Sequence[int] = DEFAULT_RANKS, fpir: Sequence[float] = DEFAULT_FPIRS,
                       ) -> IdentificationReport:
    """1:N: the probe templates of ``meta`` searched in each of its galleries."""
    if meta.probes is None or not meta.galleries:
        raise ValueError(f"{meta.root}/meta has no 1:N gallery/probe files")
    probe_t, probe_s = meta.probes
    probe_f = template_features[rows_of(template_ids, probe_t, "1:N probes")]
    results = {}
    for name, (gal_t, gal_s) in meta.galleries.items():
        gal_f = template_features[rows_of(template_ids, gal_t, f"1:N gallery {name}")]
        results[name] = identify_open_set(gal_f, gal_s, probe_f, probe_s, ranks=ranks, fpir=fpir)
    hits = {r: sum(float(np.sum(res.ranks[res.mated] <= r)) for res in results.values()) for r in ranks}
    num_mated = sum(int(res.mated.sum()) for res in results.values())
    cmc = {int(r): hits[r] / num_mated for r in ranks}
    tpir = np.mean([res.tpir for res in results.values()], axis=0)
    return IdentificationReport(results, cmc, np.asarray(fpir, np.float64), tpir)


# ---------------------------------------------------------------------------------------------- whole protocol


@dataclass(frozen=True)
class IJBResult:
    """Everything reported for one IJB release."""

    name: str
    num_images: int
    num_templates: int
    verification: VerificationReport | None
    identification: IdentificationReport | None
    options: PoolingOptions
    seconds: dict[str, float]


def evaluate_features(meta: IJBMeta, features: np.ndarray, options: PoolingOptions = PoolingOptions(), *,
                      far: Sequence[float] = metrics.DEFAULT_FARS, fpir: Sequence[float] = DEFAULT_FPIRS,
                      ranks: Sequence[int] = DEFAULT_RANKS) -> IJBResult:
    """The protocol from (N, D) raw image embeddings (rows in ``meta.images`` order): pooling, 1:1, 1:N."""
    if np.asarray(features).shape[0] != meta.images.size:
        raise ValueError(f"features has {np.asarray(features).shape[0]} rows, {meta.name} has {meta.images.size} "
                         "images")
    seconds = {}
    start = time.perf_counter()
    ids, feats = pool_templates(features, meta.templates, meta.medias, meta.face_scores, options)
    seconds["pooling"] = time.perf_counter() - start
    verification = identification = None
    if meta.pairs.size:
        start = time.perf_counter()
        verification = verify_pairs(ids, feats, meta.pairs, meta.issame, far)
        seconds["1:1"] = time.perf_counter() - start
    if meta.probes is not None:
        start = time.perf_counter()
        identification = identify_galleries(ids, feats, meta, ranks=ranks, fpir=fpir)
        seconds["1:N"] = time.perf_counter() - start
    return IJBResult(meta.name, int(meta.images.size), int(ids.size), verification, identification, options,
                     seconds)


def evaluate_model(model: nn.Module, root: str | Path, options: PoolingOptions = PoolingOptions(), *,
                   batch_size: int = 128, device: str | torch.device = "cpu", workers: int = 0,
                   far: Sequence[float] = metrics.DEFAULT_FARS, fpir: Sequence[float] = DEFAULT_FPIRS) -> IJBResult:
    """Read ``root``'s meta files, embed every aligned crop with ``model`` and run :func:`evaluate_features`."""
    meta = read_ijb(root)
    start = time.perf_counter()
    features = embed_images(model, meta, flip=options.flip, batch_size=batch_size, device=device, workers=workers)
    embed_seconds = time.perf_counter() - start
    result = evaluate_features(meta, features, options, far=far, fpir=fpir)
    result.seconds["embedding"] = embed_seconds
    return result


def release_folders(path: str | Path) -> list[Path]:
    """``path`` itself if it holds ``meta/``, else its ``IJBB``/``IJBC`` subfolders that do (sorted)."""
    path = Path(path)
    if (path / "meta").is_dir():
        return [path]
    found = [path / n for n in ("IJBB", "IJBC") if (path / n / "meta").is_dir()]
    if not found:
        raise FileNotFoundError(f"{path}: no IJB release here (expected meta/ and loose_crop/, or IJBB/ and IJBC/ "
                                "subfolders holding them)")
    return found


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def result_to_dict(result: IJBResult) -> dict:
    """JSON-ready summary (no per-pair arrays; NaN -> None)."""
    out: dict = {"name": result.name, "images": result.num_images, "templates": result.num_templates,
                 "pooling": {"flip": result.options.flip, "normalize_images": result.options.normalize_images,
                             "detector_score": result.options.detector_score},
                 "seconds": {k: round(v, 3) for k, v in result.seconds.items()}}
    if result.verification is not None:
        v = result.verification
        out["verification"] = {
            "pairs": v.num_pairs, "genuine": v.num_genuine, "auc": v.auc,
            "tar_at_far": {f"{f:g}": _finite_or_none(t) for f, t in zip(v.tar_at_far.far, v.tar_at_far.tar)}}
    if result.identification is not None:
        i = result.identification
        out["identification"] = {
            "rank": {str(r): a for r, a in i.cmc.items()},
            "tpir_at_fpir": {f"{f:g}": _finite_or_none(t) for f, t in zip(i.fpir, i.tpir)},
            "galleries": {name: {"mated": int(g.mated.sum()), "non_mated": int((~g.mated).sum()),
                                 "rank": {str(r): a for r, a in g.cmc.items()},
                                 "tpir_at_fpir": {f"{f:g}": _finite_or_none(t) for f, t in zip(g.fpir, g.tpir)}}
                          for name, g in i.galleries.items()}}
    return out
