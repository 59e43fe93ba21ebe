"""The field's one-table summary of a model: 10-fold accuracy on LFW / CFP-FP / CFP-FF / AgeDB-30 (mean ± std, %)
and IJB-B / IJB-C TAR at FAR (1:1), plus the IJB details and a JSON form for scripts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from marginface.evaluation.ijb import IJBResult, result_to_dict
from marginface.evaluation.verification import VerificationResult

#: ``.bin`` stems as the literature names the sets (others are shown as their stem).
SET_NAMES = {"lfw": "LFW", "cfp_fp": "CFP-FP", "cfp_ff": "CFP-FF", "agedb_30": "AgeDB-30", "calfw": "CALFW",
             "cplfw": "CPLFW", "vgg2_fp": "VGG2-FP"}
#: the IJB columns of the main table (papers report TAR at FAR = 1e-4, often 1e-5 beside it).
TABLE_FARS: tuple[float, ...] = (1e-5, 1e-4)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}" if math.isfinite(x) else "n/a"


def _tar(result: IJBResult, far: float) -> float:
    v = result.verification
    if v is None:
        return math.nan
    hits = np.flatnonzero(np.isclose(v.tar_at_far.far, far))
    return float(v.tar_at_far.tar[hits[0]]) if hits.size else math.nan


def _grid(rows: list[list[str]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def standard_table(model: str, sets: Sequence[VerificationResult], ijbs: Sequence[IJBResult]) -> str:
    """One row for ``model``: accuracy ± std (%) per verification set, then TAR (%) at :data:`TABLE_FARS` per IJB
    release; below it, for each IJB release, TAR at every FAR, rank-1/5/10 and TPIR at FPIR (1:N)."""
    header, row = ["model"], [model]
    for r in sets:
        header.append(SET_NAMES.get(r.name, r.name))
        row.append(f"{_pct(r.accuracy.mean)} ± {_pct(r.accuracy.std)}")
    for r in ijbs:
        for far in TABLE_FARS:
            header.append(f"{r.name} TAR@{far:.0e}")
            row.append(_pct(_tar(r, far)))
    parts = [_grid([header, row])]
    for r in ijbs:
        parts.append(ijb_details(r))
    note = "accuracy: 10-fold mean ± std (%); TAR@FAR: IJB 1:1 template pairs (%); n/a: not measurable"
    return "\n\n".join(parts) + "\n" + note


def ijb_details(result: IJBResult) -> str:
    """The IJB release's full figures: 1:1 TAR at each FAR and AUC, 1:N rank-k and TPIR at FPIR (mean of the
    two galleries; per gallery in the JSON)."""
    lines = [f"{result.name}: {result.num_images:,} images, {result.num_templates:,} templates"]
    if result.verification is not None:
        v = result.verification
        tars = ", ".join(f"{f:.0e}: {_pct(t)}" for f, t in sorted(zip(v.tar_at_far.far, v.tar_at_far.tar)))
        lines.append(f"  1:1  {v.num_pairs:,} pairs ({v.num_genuine:,} genuine); TAR (%) at FAR {tars}; "
                     f"AUC {v.auc:.4f}")
    if result.identification is not None:
        i = result.identification
        ranks = ", ".join(f"rank-{k} {_pct(a)}" for k, a in i.cmc.items())
        tpirs = ", ".join(f"{f:.0e}: {_pct(t)}" for f, t in zip(i.fpir, i.tpir))
        lines.append(f"  1:N  {ranks}; TPIR (%) at FPIR {tpirs} (mean of {'/'.join(i.galleries)})")
    return "\n".join(lines)


def plot_ijb_roc(results: Sequence[IJBResult], path: str | Path) -> Path:
    """Save the IJB 1:1 ROC curves (TAR against log FAR, 1e-6 ... 1) as a PNG; needs matplotlib."""
    from marginface.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in results:
        if r.verification is None:
            continue
        fpr, tpr, _ = r.verification.roc
        # IJB-C has 15.6M operating points: draw the last point at or below 3,000 log-spaced FARs (a staircase
        # sampled finer than the line width), never a point above the curve
        at = np.unique(np.searchsorted(fpr, np.logspace(-7, 0, 3000), side="right") - 1)
        keep = at[fpr[at] > 0]  # log axis: FAR = 0 has no position
        tar = _tar(r, 1e-4)
        ax.plot(fpr[keep], tpr[keep], drawstyle="steps-post",
                label=f"{r.name} (TAR@1e-4 " + (f"{100 * tar:.2f}%)" if math.isfinite(tar) else "n/a)"))
    ax.set(xscale="log", xlim=(1e-6, 1), ylim=(0, 1.01), xlabel="false accept rate (template pairs)",
           ylabel="true accept rate", title="IJB 1:1 ROC")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _none_if_nan(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def verification_to_dict(result: VerificationResult) -> dict:
    """JSON-ready figures of one verification set (no ROC arrays; NaN -> None): accuracy with its per-fold values
    and the fold thresholds, AUC, EER, TAR@FAR and the note on non-standard folds."""
    return {"name": result.name, "set": SET_NAMES.get(result.name, result.name), "pairs": result.num_pairs,
            "accuracy": result.accuracy.mean, "std": result.accuracy.std,
            "fold_accuracies": result.accuracy.accuracies.tolist(),
            "thresholds": [_none_if_nan(t) for t in result.accuracy.thresholds], "auc": _none_if_nan(result.auc),
            "eer": _none_if_nan(result.eer),
            "tar_at_far": {f"{f:g}": _none_if_nan(t) for f, t in zip(result.tar_at_far.far, result.tar_at_far.tar)},
            "note": result.note}


def to_json(model: str, sets: Sequence[VerificationResult], ijbs: Sequence[IJBResult]) -> dict:
    """Everything :func:`standard_table` shows (and the per-fold / per-gallery detail) as plain JSON types."""
    return {"model": model, "verification": [verification_to_dict(r) for r in sets],
            "ijb": [result_to_dict(r) for r in ijbs]}
