"""1:1 verification protocols: ``.bin`` sets, LFW-style pairs files, and embeddings from any external model.

These functions only load data, embed, and call :mod:`marginface.evaluation.metrics`:

* ``.bin`` sets (LFW, CFP-FP, AgeDB-30 in insightface's format): pairs are images ``2i`` and ``2i+1``; 10-fold
  accuracy on contiguous folds, as insightface's ``verification.py``.
* ``pairs.txt`` + image folder: the folds are the file's own (LFW View 2: 10 folds of 300 + 300 pairs).
* An embeddings file (``.npz`` or ``.safetensors``, see :func:`load_embeddings_file`) + ``pairs.txt``: evaluate
  any model's embeddings with exactly the same protocol.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from marginface.evaluation import metrics
from marginface.evaluation.embed import Preprocess, center_crop_resize, embed_files, embed_tensor
from marginface.evaluation.pairs import PairsFile, read_pairs, resolve_images


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
    """

    name: str
    accuracy: metrics.KFoldResult
    auc: float
    eer: float
    tar_at_far: metrics.TarAtFar
    roc: tuple[np.ndarray, np.ndarray, np.ndarray]

    @property
    def num_pairs(self) -> int:
        return int(self.accuracy.fold_ids.size)


def evaluate_scores(
    scores: np.ndarray, issame: np.ndarray, folds: int | np.ndarray = 10, name: str = "",
    far: Sequence[float] = metrics.DEFAULT_FARS,
) -> VerificationResult:
    """All verification metrics of (N,) pair scores and (N,) labels (``folds`` as in ``kfold_accuracy``).

    A set with only same (or only different) pairs has an accuracy but no ROC: AUC, EER and TAR are then NaN
    and the ROC arrays empty (reported as n/a rather than failing the whole evaluation).
    """
    accuracy = metrics.kfold_accuracy(scores, issame, folds)
    labels = np.asarray(issame, dtype=bool)
    if labels.all() or not labels.any():
        fars = np.asarray(far, dtype=np.float64)
        nan = np.full(fars.shape, np.nan)
        empty = np.zeros(0)
        no_far = metrics.TarAtFar(fars, nan, nan, nan, int((~labels).sum()))
        return VerificationResult(name, accuracy, math.nan, math.nan, no_far, (empty, empty, empty))
    return VerificationResult(
        name=name,
        accuracy=accuracy,
        auc=metrics.auc(scores, issame),
        eer=metrics.eer(scores, issame),
        tar_at_far=metrics.tar_at_far(scores, issame, far),
        roc=metrics.roc(scores, issame),
    )


def evaluate_interleaved(
    embeddings: np.ndarray, issame: np.ndarray, folds: int = 10, name: str = "", metric: str = "cosine"
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
    """Verify ``model`` on an insightface ``.bin`` set: flip TTA, cosine, 10 contiguous folds."""
    from marginface.data.bins import load_verification_bin

    images, issame = load_verification_bin(path)
    embeddings = embed_tensor(model, images, batch_size=batch_size, flip=flip, device=device)
    return evaluate_interleaved(embeddings, issame, 10, name or Path(path).stem)


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


def evaluate_pairs(
    model: nn.Module, pairs_path: str | Path, images_root: str | Path, *,
    preprocess: Preprocess | None = center_crop_resize, batch_size: int = 128, flip: bool = True,
    device: str | torch.device = "cpu", workers: int = 0, name: str | None = None,
) -> VerificationResult:
    """Verify ``model`` on a ``pairs.txt`` + image folder, with the file's folds.

    Each image named by a pair is read once (PIL), ``preprocess``-ed (default: centre crop, see
    :func:`~marginface.evaluation.embed.center_crop_resize` — real evaluation needs aligned faces), embedded
    with flip TTA, and pairs are scored by cosine similarity.
    """
    pairs = read_pairs(pairs_path)
    files = resolve_images(pairs, images_root)  # fails before any embedding if an image is missing
    names = list(files)
    embeddings = embed_files(model, [files[n] for n in names], preprocess=preprocess, batch_size=batch_size,
                             flip=flip, device=device, workers=workers)
    scores = scores_for_pairs(pairs, names, embeddings)
    return evaluate_scores(scores, pairs.issame, pairs.folds, name or Path(pairs_path).stem)


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


def format_table(results: Sequence[VerificationResult], fars: Sequence[float] = (1e-3, 1e-4, 1e-6)) -> str:
    """A plain-text table: set, pairs, accuracy ± std (%), AUC, EER (%), TAR (%) at each FAR in ``fars``."""
    header = ["set", "pairs", "accuracy (%)", "AUC", "EER (%)"] + [f"TAR@FAR={f:.0e}" for f in fars]
    rows = [header]
    for r in results:
        tar = dict(zip(r.tar_at_far.far.tolist(), r.tar_at_far.tar.tolist()))
        cells = [f"{100 * tar[f]:.2f}" if f in tar and np.isfinite(tar[f]) else "n/a" for f in fars]
        rows.append([r.name, str(r.num_pairs), f"{100 * r.accuracy.mean:.2f} ± {100 * r.accuracy.std:.2f}",
                     _fmt(r.auc, 1, 4), _fmt(r.eer, 100, 2), *cells])
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n(n/a: FAR target below 1/number of different pairs, not measurable on this set)"


def _fmt(value: float, scale: float, digits: int) -> str:
    return f"{scale * value:.{digits}f}" if np.isfinite(value) else "n/a"


def plot_roc(results: Sequence[VerificationResult], path: str | Path) -> Path:
    """Save the ROC curves (TPR against log-scale FPR) of ``results`` as a PNG; needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("the ROC plot needs matplotlib: pip install marginface[plot]") from err
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
    *, checkpoint: str | None, backbone: str | None, embedding_size: int = 512, bins: Sequence[str] = (),
    pairs: str | None = None, images: str | None = None, embeddings: str | None = None,
    metric: str = "cosine", batch_size: int = 128, flip: bool = True, device: str = "cpu", workers: int = 0,
) -> list[VerificationResult]:
    """What ``marginface eval`` runs: either an embeddings file on ``pairs``, or a checkpoint on ``bins``
    and/or ``pairs`` + ``images``. Raises ValueError naming the missing/conflicting options."""
    if embeddings:
        if checkpoint or bins or not pairs:
            raise ValueError("--embeddings needs --pairs and takes no --checkpoint/--bins "
                             "(the embeddings already come from a model)")
        return [evaluate_embeddings_file(embeddings, pairs, metric=metric)]
    if not (checkpoint and backbone):
        raise ValueError("give --checkpoint and --backbone (or --embeddings FILE --pairs pairs.txt)")
    if bool(pairs) != bool(images):
        raise ValueError("--pairs and --images go together (pairs.txt and its image root)")
    if not bins and not pairs:
        raise ValueError("nothing to evaluate: give --bins and/or --pairs with --images")
    from marginface.evaluation.embed import load_backbone

    model = load_backbone(backbone, checkpoint, embedding_size).to(device)
    results = [evaluate_bin(model, b, batch_size=batch_size, flip=flip, device=device) for b in bins]
    if pairs:
        results.append(evaluate_pairs(model, pairs, images, batch_size=batch_size, flip=flip, device=device,
                                      workers=workers))
    return results
