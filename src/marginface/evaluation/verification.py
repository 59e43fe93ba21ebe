"""1:1 verification protocols: ``.bin`` sets, LFW-style pairs files, and embeddings from any external model.

These functions only load data, embed, and call :mod:`marginface.evaluation.metrics`:

* ``.bin`` sets (LFW, CFP-FP, AgeDB-30 in insightface's format): pairs are images ``2i`` and ``2i+1``; 10-fold
  accuracy on contiguous folds, as insightface's ``verification.py`` (see :func:`resolve_folds` for sets whose
  contiguous folds would not each hold both classes).
* ``pairs.txt`` + image folder of aligned 112x112 faces: the folds are the file's own (LFW View 2: 10 folds of
  300 + 300 pairs); the images are decoded exactly as a ``.bin``'s are (:func:`~marginface.evaluation.embed.
  load_aligned`), so a folder and the ``.bin`` packed from it give the same numbers. Raw photos are refused
  (:func:`check_image_folder`): align them first.
* An embeddings file (``.npz`` or ``.safetensors``, see :func:`load_embeddings_file`) + ``pairs.txt``: evaluate
  any model's embeddings with exactly the same protocol.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from marginface.data.pairs import PairsFile, read_pairs, resolve_images
from marginface.evaluation import metrics
from marginface.evaluation.embed import Preprocess, center_crop_resize, embed_files, embed_tensor


@dataclass(frozen=True)
class VerificationResult:
    """Everything reported for one verification set.

    Attributes:
        name: the set's name (file stem unless given).
        accuracy: k-fold accuracy (threshold chosen on the other folds).
        auc: area under the ROC over all pairs.
        eer: equal error rate over all pairs.
        tar_at_far: TAR at the FAR targets over all pairs (NaN below 1/num_negatives).
        roc: ``(fpr, tpr, thresholds)`` over all pairs.
        note: how the folds were made when the set has no usable fold structure ('' for the standard folds).
    """

    name: str
    accuracy: metrics.KFoldResult
    auc: float
    eer: float
    tar_at_far: metrics.TarAtFar
    roc: tuple[np.ndarray, np.ndarray, np.ndarray]
    note: str = ""

    @property
    def num_pairs(self) -> int:
        return int(self.accuracy.fold_ids.size)


#: Folds of the standard protocols (LFW View 2, insightface's ``.bin`` evaluation).
NUM_FOLDS = 10


def check_both_classes(issame: np.ndarray, name: str) -> tuple[int, int]:
    """``(same, different)`` pair counts; raises when one class is missing (accuracy would be meaningless)."""
    y = np.asarray(issame, dtype=bool)
    same, different = int(y.sum()), int(y.size - y.sum())
    if same == 0 or different == 0:
        kind = "same" if different == 0 else "different"
        raise ValueError(
            f"{name}: all {y.size} pairs are {kind} pairs: a verification set needs same and different pairs "
            f"(with one class any threshold beyond every score scores 100%, and there is no ROC); use a set "
            "with both, e.g. LFW's pairs.txt or an insightface lfw.bin"
        )
    return same, different


def resolve_folds(
    issame: np.ndarray, folds: int | np.ndarray | None = None, name: str = "set"
) -> tuple[np.ndarray, str]:
    """The (N,) fold ids to use and a note ('' when the folds are the standard ones). Raises before any work.

    * ``folds`` an array with >= 2 distinct ids (a ``pairs.txt``'s own folds): every fold must hold same and
      different pairs, else ValueError naming the fold.
    * ``folds`` None / an int ``k`` (default 10), or an array with a single fold (a ``.bin``, a one-fold
      ``pairs.txt``): ``k`` contiguous folds (insightface's rule) when each of them holds both classes. Otherwise
      -- e.g. a ``.bin`` holding every same pair before every different one -- the rule is stated in the note:
      the ``i``-th same pair and the ``i``-th different pair go to fold ``i mod k'``, with
      ``k' = min(k, #same, #different)`` (stratified, in file order).

    Raises:
        ValueError: a class is missing, fewer than 2 pairs of a class (no 2-fold split), or a declared fold
            without both classes.
    """
    y = np.asarray(issame, dtype=bool)
    same, different = check_both_classes(y, name)
    if folds is not None and not isinstance(folds, (int, np.integer)) and np.unique(folds).size >= 2:
        ids = np.asarray(folds, dtype=np.int64)
        for fold in np.unique(ids):
            if len(np.unique(y[ids == fold])) < 2:
                raise ValueError(f"{name}: fold {int(fold)} holds only {'same' if y[ids == fold][0] else 'different'}"
                                 " pairs; every fold needs both (its threshold is chosen on the other folds)")
        return ids, ""
    k = NUM_FOLDS if folds is None or not isinstance(folds, (int, np.integer)) else int(folds)
    if y.size >= k >= 2:
        ids = metrics.contiguous_folds(y.size, k)
        if all(np.unique(y[ids == f]).size == 2 for f in range(k)):
            return ids, ""
    k2 = min(k, same, different)
    if k2 < 2:
        raise ValueError(f"{name}: {same} same and {different} different pairs; k-fold accuracy needs at least 2 "
                         "of each")
    ids = np.empty(y.size, dtype=np.int64)
    ids[y], ids[~y] = np.arange(same) % k2, np.arange(different) % k2
    note = (f"{name} has no fold structure whose {k} contiguous folds each hold both classes; used {k2} "
            f"stratified folds: the i-th same pair and the i-th different pair go to fold i mod {k2}")
    return ids, note


def evaluate_scores(
    scores: np.ndarray, issame: np.ndarray, folds: int | np.ndarray | None = None, name: str = "",
    far: Sequence[float] = metrics.DEFAULT_FARS,
) -> VerificationResult:
    """All verification metrics of (N,) pair scores and (N,) labels; ``folds`` as in :func:`resolve_folds`.

    Raises:
        ValueError: a one-class set or unusable folds (see :func:`resolve_folds`).
    """
    ids, note = resolve_folds(issame, folds, name or "set")
    return VerificationResult(
        name=name,
        accuracy=metrics.kfold_accuracy(scores, issame, ids),
        auc=metrics.auc(scores, issame),
        eer=metrics.eer(scores, issame),
        tar_at_far=metrics.tar_at_far(scores, issame, far),
        roc=metrics.roc(scores, issame),
        note=note,
    )


def evaluate_interleaved(
    embeddings: np.ndarray, issame: np.ndarray, folds: int | np.ndarray | None = None, name: str = "",
    metric: str = "cosine",
) -> VerificationResult:
    """``.bin`` layout: (2N, D) embeddings where rows ``2i`` and ``2i+1`` are pair ``i``; (N,) labels."""
    emb = np.asarray(embeddings)
    if emb.ndim != 2 or emb.shape[0] != 2 * len(issame):
        raise ValueError(f"embeddings must be (2N, D) with N={len(issame)} pairs, got {emb.shape}")
    return evaluate_scores(metrics.pair_scores(emb[0::2], emb[1::2], metric), issame, folds, name)


def evaluate_bin(
    model: nn.Module, path: str | Path, *, batch_size: int = 128, flip: bool = True,
    device: str | torch.device = "cpu", name: str | None = None,
) -> VerificationResult:
    """Verify ``model`` on an insightface ``.bin`` set: flip TTA, cosine, 10 contiguous folds.

    The labels are checked (:func:`resolve_folds`) before any image is decoded or embedded.
    """
    from marginface.data.bins import load_verification_bin, read_verification_bin

    name = name or Path(path).stem
    resolve_folds(read_verification_bin(path)[1], None, name)  # refuse a one-class set before decoding
    images, issame = load_verification_bin(path)
    embeddings = embed_tensor(model, images, batch_size=batch_size, flip=flip, device=device)
    return evaluate_interleaved(embeddings, issame, None, name)


def evaluate_bins(
    model: nn.Module, paths: Sequence[str | Path], *, batch_size: int = 128, flip: bool = True,
    device: str | torch.device = "cpu",
) -> list[VerificationResult]:
    """:func:`evaluate_bin` on each of ``paths``, embedding every distinct stored image once.

    A ``.bin`` stores both images of every pair, so an image used by k pairs is stored k times. Measured on the
    sets ``marginface prepare`` packs: LFW 12,000 stored / 7,701 distinct, CFP-FP 14,000 / 5,890, CFP-FF 14,000 /
    4,737 of which only 991 are not already in CFP-FP — the three together 40,000 stored, 14,582 distinct.
    Identical bytes decode to the identical tensor and the model is in eval mode, so each set's result is
    :func:`evaluate_bin`'s (up to float rounding where a batch of other images takes another convolution
    algorithm); only the forwards are fewer. Every set's labels are checked before anything is decoded.
    """
    from marginface.data.bins import decode_verification_images, read_verification_bin

    if not paths:
        return []
    sets, row_of, to_decode = [], {}, []  # row_of: stored bytes -> row among the distinct images
    for path in paths:
        encoded, issame = read_verification_bin(path)
        resolve_folds(issame, None, Path(path).stem)
        rows, new = [], []
        for i, data in enumerate(encoded):
            if data not in row_of:
                row_of[data] = len(row_of)
                new.append(i)
            rows.append(row_of[data])
        to_decode.append((path, encoded, new))
        sets.append((Path(path).stem, np.asarray(rows), issame))
    images = torch.cat([decode_verification_images(encoded, path, new) for path, encoded, new in to_decode])
    embeddings = embed_tensor(model, images, batch_size=batch_size, flip=flip, device=device)
    return [evaluate_interleaved(embeddings[rows], issame, None, name) for name, rows, issame in sets]


def scores_for_pairs(
    pairs: PairsFile, names: Sequence[str], embeddings: np.ndarray, metric: str = "cosine"
) -> np.ndarray:
    """(N,) scores of the pairs, looking each image name up among ``names`` (rows of (M, D) ``embeddings``).

    Raises:
        ValueError: a pair names an image with no embedding (the message names the pairs line), or
            ``names`` has duplicates / a length different from ``embeddings``.
    """
    if len(names) != len(embeddings):
        raise ValueError(f"{len(names)} names but {len(embeddings)} embeddings; they must correspond row by row")
    row = {name: i for i, name in enumerate(names)}
    if len(row) != len(names):
        raise ValueError("names has duplicates; each image must have exactly one embedding")
    index = np.empty(pairs.names.shape, dtype=np.int64)
    for k, (pair, line) in enumerate(zip(pairs.names, pairs.lines)):
        for side, name in enumerate(pair):
            if name not in row:
                raise ValueError(f"pairs line {int(line)} names {name}, which has no embedding")
            index[k, side] = row[name]
    emb = np.asarray(embeddings)
    return metrics.pair_scores(emb[index[:, 0]], emb[index[:, 1]], metric)


def check_image_folder(files: Sequence[Path], root: str | Path, aligned: bool = False, size: int = 112) -> None:
    """Check that ``files`` (the images a pairs file names) are aligned ``size`` x ``size`` faces.

    Only the image headers are read. A folder of other sizes holds raw photos (or the wrong crops): evaluating
    them as they are would be silently wrong, so the error names the first one and the fix. (A folder of raw
    photos that happen to be 112x112 cannot be told apart from aligned faces.)

    Raises:
        ValueError: some image is not ``size`` x ``size`` or cannot be read.
    """
    from PIL import Image as PILImage

    wrong = []
    for file in files:
        try:
            with PILImage.open(file) as image:
                if image.size != (size, size):
                    wrong.append((file, image.size))
        except OSError as err:
            raise ValueError(f"{file} is not a readable image ({err}); replace or remove it") from err
    if not wrong:
        return
    (first, (w, h)), count = wrong[0], f"{len(wrong)} of {len(files)} images"
    if aligned:
        raise ValueError(f"`aligned`: {count} under {root} are not {size}x{size} aligned faces (e.g. {first} is "
                         f"{w}x{h}); align the folder first (marginface align) and pass the aligned folder")
    raise ValueError(
        f"{root} holds raw photos, not aligned {size}x{size} faces ({count}, e.g. {first} is {w}x{h}). Align them "
        f"first: marginface align {root} ALIGNED --fallback median, then `images=ALIGNED` (or `center_crop` for a "
        "rough stand-in whose numbers are not comparable with aligned evaluation)"
    )


def prepare_pairs(
    pairs_path: str | Path, images_root: str | Path, preprocess: Preprocess | str | None = "auto",
    name: str | None = None, aligned: bool = False,
) -> tuple[PairsFile, dict[str, Path], np.ndarray, str]:
    """Everything about a pairs + folder evaluation that can fail, checked before any embedding.

    Returns ``(pairs, files, folds, note)``: the parsed file, each image name's file, the fold ids and the fold
    note (see :func:`resolve_folds`). ``preprocess="auto"`` or None requires aligned faces
    (:func:`check_image_folder`); a callable (e.g. :func:`center_crop_resize`) is the caller's choice.
    """
    pairs = read_pairs(pairs_path)
    files = resolve_images(pairs, images_root)  # fails before any embedding if an image is missing
    folds, note = resolve_folds(pairs.issame, pairs.folds, name or Path(pairs_path).stem)
    if preprocess is None or preprocess == "auto":
        check_image_folder(list(files.values()), images_root, aligned)
    elif callable(preprocess):
        note = "; ".join(filter(None, [note, f"{name or Path(pairs_path).stem}: preprocessed by "
                                       f"{getattr(preprocess, '__name__', 'a custom function')} (not aligned faces: "
                                       "not comparable with aligned evaluation)"]))
    return pairs, files, folds, note


def evaluate_pairs(
    model: nn.Module, pairs_path: str | Path, images_root: str | Path, *,
    preprocess: Preprocess | str | None = "auto", batch_size: int = 128, flip: bool = True,
    device: str | torch.device = "cpu", workers: int = 0, name: str | None = None,
) -> VerificationResult:
    """Verify ``model`` on a ``pairs.txt`` + image folder, with the file's folds.

    ``preprocess``: ``"auto"`` (default) or None: the folder must hold aligned 112x112 faces (e.g. written by
    ``marginface align``), decoded exactly as a ``.bin``'s images; raw photos raise with the fix. A callable
    maps each PIL image to the model's input instead (:func:`~marginface.evaluation.embed.center_crop_resize`
    is a rough stand-in for unaligned photos). Each image named by a pair is read once, embedded with flip TTA,
    and pairs are scored by cosine similarity.
    """
    name = name or Path(pairs_path).stem
    pairs, files, folds, note = prepare_pairs(pairs_path, images_root, preprocess, name)
    names = list(files)
    embeddings = embed_files(model, [files[n] for n in names], preprocess=None if preprocess == "auto" else preprocess,
                             batch_size=batch_size, flip=flip, device=device, workers=workers)
    scores = scores_for_pairs(pairs, names, embeddings)
    result = evaluate_scores(scores, pairs.issame, folds, name)
    return dataclasses.replace(result, note="; ".join(filter(None, [result.note, note])))


def load_embeddings_file(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read embeddings from an external model: ``(names, (N, D) float32)``.

    Formats:

    * ``.npz`` with ``names`` — (N,) string array of image paths relative to the images root, POSIX
      separators (``Abel_Pacheco/Abel_Pacheco_0001.jpg``) — and ``embeddings`` — (N, D) floats. Written e.g. by
      ``np.savez(f, names=np.array(names, dtype=str), embeddings=emb)``; pickled object arrays are refused.
    * ``.safetensors`` with one (D,) tensor per image, keyed by that relative path.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file {path} does not exist")
    if path.suffix == ".npz":
        return _load_npz(path)
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        tensors = load_file(str(path))
        names = sorted(tensors)
        if not names:
            raise ValueError(f"{path} holds no tensors")
        return names, np.stack([tensors[n].astype(np.float32).ravel() for n in names])
    raise ValueError(f"embeddings file {path} must be .npz (names, embeddings) or .safetensors (one tensor per image)")


def _load_npz(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"names", "embeddings"} - set(data.files)
            if missing:
                raise ValueError(f"{path} lacks {sorted(missing)}; it must hold 'names' and 'embeddings'")
            names, embeddings = data["names"], data["embeddings"].astype(np.float32)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise ValueError(f"{path}: 'names' must be a string array (np.array(names, dtype=str)); "
                             "pickled object arrays are refused") from err
        raise
    if names.ndim != 1 or embeddings.ndim != 2 or len(names) != len(embeddings):
        raise ValueError(f"{path}: names must be (N,) and embeddings (N, D), got {names.shape} and {embeddings.shape}")
    return [str(n) for n in names], embeddings


def evaluate_embeddings_file(
    embeddings_file: str | Path, pairs_path: str | Path, metric: str = "cosine", name: str | None = None
) -> VerificationResult:
    """Verify precomputed embeddings (see :func:`load_embeddings_file`) on a ``pairs.txt`` with its folds."""
    names, embeddings = load_embeddings_file(embeddings_file)
    pairs = read_pairs(pairs_path)
    scores = scores_for_pairs(pairs, names, embeddings, metric)
    return evaluate_scores(scores, pairs.issame, pairs.folds, name or Path(embeddings_file).stem)


def format_threshold(result: VerificationResult) -> str:
    """The accepted-if-score->=-threshold value(s) chosen on the folds: one number, or ``min..max`` over folds."""
    t = result.accuracy.thresholds
    lo, hi = float(np.min(t)), float(np.max(t))
    if lo == hi:
        return f"{lo:.4f}"
    # enough decimals to tell the two apart (cosines of a weak model crowd near 1: 0.99987..0.99991)
    digits = next((d for d in range(4, 10) if f"{lo:.{d}f}" != f"{hi:.{d}f}"), 10)
    return f"{lo:.{digits}f}..{hi:.{digits}f}"


def format_table(results: Sequence[VerificationResult], fars: Sequence[float] = (1e-3, 1e-4, 1e-6)) -> str:
    """A plain-text table: set, pairs, accuracy ± std (%), the fold thresholds, AUC, EER (%), TAR (%) at ``fars``;
    then the notes of sets whose folds were not the standard ones."""
    header = ["set", "pairs", "accuracy (%)", "threshold", "AUC", "EER (%)"] + [f"TAR@FAR={f:.0e}" for f in fars]
    rows = [header]
    for r in results:
        tar = dict(zip(r.tar_at_far.far.tolist(), r.tar_at_far.tar.tolist()))
        cells = [f"{100 * tar[f]:.2f}" if f in tar and np.isfinite(tar[f]) else "n/a" for f in fars]
        rows.append([r.name, str(r.num_pairs), f"{100 * r.accuracy.mean:.2f} ± {100 * r.accuracy.std:.2f}",
                     format_threshold(r), _fmt(r.auc, 1, 4), _fmt(r.eer, 100, 2), *cells])
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("(threshold: a pair is 'same' when its score >= the threshold chosen on the other folds; "
                 "min..max over folds)")
    lines.append("(n/a: FAR target below 1/number of different pairs, not measurable on this set)")
    lines += [f"note: {r.note}" for r in results if r.note]
    return "\n".join(lines)


def _fmt(value: float, scale: float, digits: int) -> str:
    return f"{scale * value:.{digits}f}" if np.isfinite(value) else "n/a"


def plot_roc(results: Sequence[VerificationResult], path: str | Path) -> Path:
    """Save the ROC curves (TPR against log-scale FPR) of ``results`` as a PNG; needs matplotlib."""
    from marginface.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in results:
        fpr, tpr, _ = r.roc
        if fpr.size == 0:  # one-class set: no curve
            continue
        keep = fpr > 0  # log axis: FPR = 0 has no position
        ax.plot(fpr[keep], tpr[keep], label=f"{r.name} ({100 * r.accuracy.mean:.2f}%)")
    ax.set(xscale="log", xlabel="false accept rate", ylabel="true accept rate", title="ROC", ylim=(0, 1.01))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def evaluate_cli_sets(
    *, checkpoint: str | None, backbone: str | None, embedding_size: int | None = None, bins: Sequence[str] = (),
    pairs: str | None = None, images: str | None = None, embeddings: str | None = None,
    metric: str = "cosine", batch_size: int = 128, flip: bool = True, device: str = "cpu", workers: int = 0,
    aligned: bool = False, center_crop: bool = False,
) -> list[VerificationResult]:
    """What ``marginface eval`` runs: either an embeddings file on ``pairs``, or a checkpoint on ``bins``
    and/or ``pairs`` + ``images``. Every set is checked (labels, folds, files, image sizes) before the model is
    loaded. Raises ValueError naming the missing/conflicting arguments (as `name`: the CLI puts its flags there)."""
    if embeddings:
        if checkpoint or bins or not pairs or images:
            raise ValueError("`embeddings` needs `pairs` and takes no `checkpoint`/`bins`/`images` "
                             "(the embeddings already come from a model)")
        return [evaluate_embeddings_file(embeddings, pairs, metric=metric)]
    if not checkpoint:
        raise ValueError("give `checkpoint` (or `embeddings=FILE` `pairs=pairs.txt`)")
    if bool(pairs) != bool(images):
        raise ValueError("`pairs` and `images` go together (pairs.txt and its image root)")
    if not bins and not pairs:
        raise ValueError("nothing to evaluate: give `bins` and/or `pairs` with `images`")
    if aligned and center_crop:
        raise ValueError("`aligned` and `center_crop` exclude each other: aligned faces are used as they are")
    from marginface.data.bins import read_verification_bin
    from marginface.models.backbone import load_backbone

    for b in bins:  # labels first: a one-class set is refused before anything is embedded
        resolve_folds(read_verification_bin(b)[1], None, Path(b).stem)
    preprocess = center_crop_resize if center_crop else "auto"
    if pairs:
        prepare_pairs(pairs, images, preprocess, aligned=aligned)
    model = load_backbone(backbone, checkpoint, embedding_size).to(device)
    results = evaluate_bins(model, bins, batch_size=batch_size, flip=flip, device=device)
    if pairs:
        results.append(evaluate_pairs(model, pairs, images, preprocess=preprocess, batch_size=batch_size, flip=flip,
                                      device=device, workers=workers))
    return results
