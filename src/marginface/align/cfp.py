"""CFP (Celebrities in Frontal-Profile, Sengupta et al., WACV 2016) -> aligned verification ``.bin``.

Official layout (``Readme.txt`` of the release)::

    Data/Images/NNN/{frontal,profile}/NN.jpg      500 people x (10 frontal + 4 profile)
    Data/Fiducials/NNN/{frontal,profile}/NN.txt   30 "x,y" lines per image (the visible half of the face)
    Protocol/Pair_list_F.txt, Pair_list_P.txt     "index ../Data/Images/..." (5,000 frontal, 2,000 profile)
    Protocol/Split/{FF,FP}/01..10/{same,diff}.txt "i,j" lines, 350 + 350 per split;
                                                  FF: frontal,frontal; FP: frontal,profile

Every image is aligned with the detector (MTCNN by default). Where it finds no face, the five ArcFace points
are predicted from the 30 annotated fiducials by a :class:`FiducialMap` fitted, per view, on the images of the
same run where both exist (least squares in a similarity-normalised frame, see :func:`fit_fiducial_map`).
The ``.bin`` lists the pairs split by split (01, then 02, ...), so the 10 contiguous folds that
:func:`marginface.evaluation.verification.evaluate_bin` uses are exactly the 10 official splits.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from marginface.align.pipeline import AlignOptions, AlignReport, align_images, emit, read_rgb
from marginface.align.template import similarity_transform

VIEWS = ("frontal", "profile")
NUM_FIDUCIALS = 30
#: fiducial rows on the jaw line and on the nose (the annotated half-face: 0-8 jaw, 18-24 nose); used only
#: to tell which way the face looks (nose to the right of the jaw = the canonical direction).
_JAW, _NOSE = slice(0, 9), slice(18, 25)
#: ArcFace order after a mirror: left/right eyes and mouth corners swap.
_MIRROR_ORDER = [1, 0, 2, 4, 3]


@dataclass(frozen=True)
class CfpProtocol:
    """One CFP protocol in fold order.

    Attributes:
        images: the distinct image paths used, sorted.
        pairs: (N, 2) indices into ``images``; pairs are grouped by split 01..10 (same, then diff).
        issame: (N,) bool.
        folds: (N,) int, 0..9 = the official split of each pair.
    """

    images: list[Path]
    pairs: np.ndarray
    issame: np.ndarray
    folds: np.ndarray


def _read_pair_list(path: Path) -> dict[int, Path]:
    if not path.is_file():
        raise FileNotFoundError(f"CFP pair list {path} does not exist (expected the official Protocol/ folder)")
    table = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[0].isdigit():
            raise ValueError(f"{path}:{number}: expected 'index ../Data/Images/...jpg', got {line!r}")
        table[int(fields[0])] = (path.parent / fields[1]).resolve()
    return table


def _read_split_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"CFP split file {path} does not exist")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append([int(v) for v in line.split(",")])
            except ValueError as err:
                raise ValueError(f"{path}:{number}: expected 'i,j', got {line!r}") from err
            if len(rows[-1]) != 2:
                raise ValueError(f"{path}:{number}: expected 'i,j', got {line!r}")
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def read_protocol(cfp_dir: str | Path, protocol: str) -> CfpProtocol:
    """Read protocol ``"FP"`` (frontal-profile) or ``"FF"`` (frontal-frontal) from the official files.

    Raises FileNotFoundError naming the missing file, ValueError naming a bad line or an index that is
    not in the pair list.
    """
    if protocol not in ("FP", "FF"):
        raise ValueError(f"protocol must be 'FP' or 'FF', got {protocol!r}")
    root = Path(cfp_dir) / "Protocol"
    frontal = _read_pair_list(root / "Pair_list_F.txt")
    second = frontal if protocol == "FF" else _read_pair_list(root / "Pair_list_P.txt")
    named, issame, folds = [], [], []
    for split in range(1, 11):
        for kind in ("same", "diff"):
            path = root / "Split" / protocol / f"{split:02d}" / f"{kind}.txt"
            for i, j in _read_split_file(path):
                if i not in frontal or j not in second:
                    raise ValueError(f"{path}: pair {i},{j} names an index missing from the pair lists")
                named.append((frontal[i], second[j]))
                issame.append(kind == "same")
                folds.append(split - 1)
    images = sorted({p for pair in named for p in pair})
    row = {p: k for k, p in enumerate(images)}
    pairs = np.array([[row[a], row[b]] for a, b in named], dtype=np.int64)
    return CfpProtocol(images, pairs, np.array(issame, dtype=bool), np.array(folds, dtype=np.int64))


def view_of(image: Path) -> str:
    """``"frontal"`` or ``"profile"``: the folder above the image file."""
    view = Path(image).parent.name
    if view not in VIEWS:
        raise ValueError(f"{image} is not under a frontal/ or profile/ folder")
    return view


def fiducials_path(image: Path) -> Path:
    """``Data/Images/NNN/view/NN.jpg`` -> ``Data/Fiducials/NNN/view/NN.txt``."""
    image = Path(image)
    return image.parents[3] / "Fiducials" / image.parent.parent.name / image.parent.name / (image.stem + ".txt")


def read_fiducials(path: str | Path) -> np.ndarray:
    """The 30 annotated points of one image, (30, 2) float64 pixels (x, y)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CFP fiducials {path} do not exist")
    points = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    if points.shape != (NUM_FIDUCIALS, 2) or not np.isfinite(points).all():
        raise ValueError(f"{path} must hold {NUM_FIDUCIALS} finite 'x,y' lines, got shape {points.shape}")
    return points


# ---------------------------------------------------------------------------------------------------------
# 30 fiducials -> 5 ArcFace points


def _canonical(fiducials: np.ndarray) -> tuple[np.ndarray, bool]:
    """Mirror (x -> -x) the fiducials of a face looking left so that every face looks the same way."""
    mirrored = fiducials[_NOSE, 0].mean() < fiducials[_JAW, 0].mean()
    return (fiducials * [-1.0, 1.0] if mirrored else fiducials), bool(mirrored)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def _invert(matrix: np.ndarray) -> np.ndarray:
    linear = np.linalg.inv(matrix[:, :2])
    return np.hstack([linear, -(linear @ matrix[:, 2])[:, None]])


@dataclass(frozen=True)
class FiducialMap:
    """Predicts the five ArcFace points of a face from its 30 CFP fiducials (one map per view).

    Both point sets are mirrored to one facing direction and moved into the frame where the fiducials best
    match ``reference`` (least-squares similarity); there the five points are a linear function of the 60
    fiducial coordinates, ``weights`` (61, 10) (the last row is the offset). Predictions are moved back.
    """

    reference: np.ndarray
    weights: np.ndarray

    def predict(self, fiducials: np.ndarray) -> np.ndarray:
        """(30, 2) fiducials -> (5, 2) ArcFace points, same pixel frame."""
        canonical, mirrored = _canonical(np.asarray(fiducials, dtype=np.float64))
        to_ref = similarity_transform(canonical, self.reference)
        flat = np.append(_apply(to_ref, canonical).ravel(), 1.0)
        five = _apply(_invert(to_ref), (flat @ self.weights).reshape(5, 2))
        return five[_MIRROR_ORDER] * [-1.0, 1.0] if mirrored else five


def fit_fiducial_map(fiducials: np.ndarray, landmarks: np.ndarray, ridge: float = 1e-3) -> FiducialMap:
    """Fit a :class:`FiducialMap` on (M, 30, 2) fiducials and the (M, 5, 2) detector points of the same faces.

    The reference shape is the mean of the mirrored fiducials after one generalised-Procrustes step; the
    regression is ridge-regularised least squares (``ridge`` relative to the mean diagonal of the normal
    matrix), because 61 unknowns per coordinate are fitted from a few thousand noisy faces.
    """
    fiducials, landmarks = np.asarray(fiducials, np.float64), np.asarray(landmarks, np.float64)
    if fiducials.ndim != 3 or fiducials.shape[1:] != (NUM_FIDUCIALS, 2) or landmarks.shape != (len(fiducials), 5, 2):
        raise ValueError(f"need (M, 30, 2) fiducials and (M, 5, 2) landmarks, got {fiducials.shape}, {landmarks.shape}")
    if len(fiducials) < 20:
        raise ValueError(f"fitting the fiducial map needs >= 20 faces with both point sets, got {len(fiducials)}")
    canon = [_canonical(f) for f in fiducials]
    targets = np.array([lm[_MIRROR_ORDER] * [-1.0, 1.0] if m else lm for (_, m), lm in zip(canon, landmarks)])
    shapes = np.array([c for c, _ in canon])
    centred = shapes - shapes.mean(axis=1, keepdims=True)
    reference = (centred / np.sqrt((centred**2).sum(axis=(1, 2), keepdims=True))).mean(axis=0)
    reference = 100.0 * reference / np.sqrt((reference**2).sum())
    reference = np.mean([_apply(similarity_transform(s, reference), s) for s in shapes], axis=0)
    x, y = [], []
    for shape, target in zip(shapes, targets):
        to_ref = similarity_transform(shape, reference)
        x.append(np.append(_apply(to_ref, shape).ravel(), 1.0))
        y.append(_apply(to_ref, target).ravel())
    x, y = np.array(x), np.array(y)
    normal = x.T @ x
    normal += ridge * np.trace(normal) / len(normal) * np.eye(len(normal))
    return FiducialMap(reference, np.linalg.solve(normal, x.T @ y))


def landmark_errors(predicted: np.ndarray, detected: np.ndarray) -> dict[str, float]:
    """Mean point error of (M, 5, 2) predictions against (M, 5, 2) detector points: pixels, and divided by
    each face's inter-ocular distance (of the detector points)."""
    dist = np.linalg.norm(predicted - detected, axis=2).mean(axis=1)
    iod = np.linalg.norm(detected[:, 0] - detected[:, 1], axis=1)
    return {"faces": int(len(dist)), "mean_px": float(dist.mean()), "median_px": float(np.median(dist)),
            "mean_iod": float((dist / np.maximum(iod, 1e-6)).mean())}


def validate_fiducial_map(fiducials: np.ndarray, landmarks: np.ndarray, groups: np.ndarray,
                          holdout: float = 0.2, seed: int = 0) -> dict[str, float]:
    """Fit on the faces of ``1 - holdout`` of the identities (``groups``, (M,)) and report
    :func:`landmark_errors` on the held-out identities' faces (no identity on both sides)."""
    ids = np.unique(groups)
    held = np.random.default_rng(seed).permutation(ids)[: max(1, int(round(holdout * len(ids))))]
    test = np.isin(groups, held)
    model = fit_fiducial_map(fiducials[~test], landmarks[~test])
    predicted = np.array([model.predict(f) for f in fiducials[test]])
    return landmark_errors(predicted, landmarks[test])


# ---------------------------------------------------------------------------------------------------------
# the .bin


@dataclass
class CfpReport:
    """What :func:`build_cfp_bin` did, per view; written beside the ``.bin`` as ``<stem>.align_report.json``."""

    protocol: str
    detector: str
    images: dict[str, int] = field(default_factory=dict)
    detected: dict[str, int] = field(default_factory=dict)
    fallback: dict[str, int] = field(default_factory=dict)
    map_validation: dict[str, dict] = field(default_factory=dict)
    fallback_images: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        parts = [f"{v}: {self.detected.get(v, 0)}/{n} detected, {self.fallback.get(v, 0)} by the fiducial map"
                 for v, n in self.images.items()]
        return f"CFP-{self.protocol} ({self.detector}): " + "; ".join(parts) + f"; {self.seconds:.0f} s"


def _fit_maps(records: list[dict], report: CfpReport) -> dict[str, FiducialMap]:
    maps = {}
    for view in VIEWS:
        found = [r for r in records if r["view"] == view and r["faces"]]
        if len(found) < 20:
            continue
        fid = np.array([r["fiducials"] for r in found])
        det = np.array([r["landmarks"] for r in found])
        groups = np.array([Path(r["path"]).parent.parent.name for r in found])
        report.map_validation[view] = validate_fiducial_map(fid, det, groups)
        maps[view] = fit_fiducial_map(fid, det)
    return maps


def align_cfp_images(images: list[Path], options: AlignOptions, report: CfpReport) -> dict[Path, bytes]:
    """Align every image: the detector where it finds a face, else the fiducial map of its view (the map of
    the other view when a view has too few detections to fit one). Returns path -> encoded 112x112 face."""
    from marginface.align.template import warp_face

    records = align_images([(p, None) for p in images], replace(options, fallback="none"),
                           AlignReport(options.detector))
    for record in records:
        record["view"] = view_of(record["path"])
        record["fiducials"] = read_fiducials(fiducials_path(record["path"]))
    maps = _fit_maps(records, report)
    encoded = {}
    for record in records:
        view = record["view"]
        report.images[view] = report.images.get(view, 0) + 1
        if record["faces"]:
            report.detected[view] = report.detected.get(view, 0) + 1
            encoded[record["path"]] = record["encoded"]
            continue
        model = maps.get(view) or next(iter(maps.values()), None)
        if model is None:
            raise ValueError("the detector found too few faces (< 20 per view) to fit the fiducial fallback")
        crop = warp_face(read_rgb(record["path"]), model.predict(record["fiducials"]), options.image_size)
        encoded[record["path"]] = emit(crop, None, options.ext)
        report.fallback[view] = report.fallback.get(view, 0) + 1
        report.fallback_images.append(str(record["path"]))
    return encoded


def build_cfp_bin(cfp_dir: str | Path, protocol: str, out: str | Path,
                  options: AlignOptions | None = None) -> CfpReport:
    """Align the images of CFP protocol ``"FP"`` or ``"FF"`` and write the ``.bin`` (pairs in split order:
    10 contiguous folds of 700 = the official splits). The report is also written beside ``out``."""
    from marginface.data.bins import write_verification_bin

    options = options or AlignOptions()
    cfp = read_protocol(cfp_dir, protocol)
    missing = [p for p in cfp.images if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} CFP images named by the protocol are missing, e.g. {missing[0]}")
    report, start = CfpReport(protocol, options.detector), time.perf_counter()
    encoded = align_cfp_images(cfp.images, options, report)
    images = [encoded[cfp.images[k]] for pair in cfp.pairs for k in pair]
    out = Path(out)
    write_verification_bin(out, images, cfp.issame)  # atomic: a crash never leaves a half-written .bin
    report.seconds = round(time.perf_counter() - start, 2)
    data = {**asdict(report), "pairs": int(len(cfp.issame)), "summary": report.summary()}
    out.with_name(out.stem + ".align_report.json").write_text(json.dumps(data, indent=1))
    return report
