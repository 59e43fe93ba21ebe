"""The numbers docs/results.md states about the embedding-block fine-tuning study (issue 30's CPU variant),
recomputed from the committed copy of its results.csv with the study's own statistics (``study.compare``, Welch's
t, Holm over each ``--compare`` call's family) and the protocol's decision rule."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from marginface.experiments import study, study_stats

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT / "docs" / "results" / "ms1m_embedding_block_results.csv"
SETS = ["lfw", "cfp_fp", "cfp_ff", "lfw_8px_q30"]
ROWS = list(csv.DictReader(CSV.open(newline="")))
MARGIN = ["arcface", "cosface", "sphereface", "curricularface"]
TRAINED = [*MARGIN, "triplet", "arcface_tripletopt"]
FAMILIES = {
    "Q1": [(a, "as_is") for a in TRAINED],
    "Q2": [(a, b) for i, a in enumerate(MARGIN) for b in MARGIN[i + 1:]],
    "Q3": [("triplet", "arcface_tripletopt")],
}


def _text() -> str:
    return re.sub(r"\s+", " ", (ROOT / "docs" / "results.md").read_text())


def verdict(c: study.Comparison, p_holm: float) -> str:
    """The protocol's rule on accuracy: tie (within the larger seed std), decided (Holm p < 0.05), else cannot tell."""
    if abs(c.difference) <= c.spread:
        return "tie"
    if p_holm < 0.05:
        return f"{c.a.arm} ahead" if c.difference > 0 else f"{c.b.arm} ahead"
    return "cannot tell"


def family(name: str) -> list[tuple[study.Comparison, float]]:
    """Every comparison of one family (accuracy and TAR of each set, as ``--compare`` makes them) with its Holm p."""
    found = [study.compare(ROWS, a, b, f"{s}_{m}") for a, b in FAMILIES[name] for s in SETS for m in ("acc", "tar")]
    return list(zip(found, study_stats.holm([c.welch.p for c in found]), strict=True))


def verdict_table(name: str) -> str:
    """The markdown table of one family's accuracy comparisons that docs/results.md shows."""
    lines = ["| comparison | set | difference (points) | larger seed std | Holm p | verdict |",
             "|---|---|---|---|---|---|"]
    for c, p in family(name):
        if c.a.metric.endswith("_acc"):
            lines.append(f"| {c.a.arm} vs {c.b.arm} | {c.a.metric[:-4]} | {100 * c.difference:+.2f} | "
                         f"{100 * c.spread:.2f} | {p:.3g} | {verdict(c, p)} |")
    return "\n".join(lines)


def test_the_csv_holds_the_planned_runs_once_each():
    pairs = [(r["arm"], r["seed"]) for r in ROWS]
    assert len(pairs) == len(set(pairs)) == 70
    assert {r["arm"] for r in ROWS} == {"as_is", *TRAINED} and {r["seed"] for r in ROWS} == {str(s) for s in range(10)}


def test_the_results_table_is_the_csv():
    assert re.sub(r"\s+", " ", study.summary_table(ROWS, SETS)) in _text()


def test_the_verdict_tables_are_the_csv_under_the_protocols_rule():
    text = _text()
    for name in FAMILIES:
        assert re.sub(r"\s+", " ", verdict_table(name)) in text, f"{name}'s verdict table differs from the CSV"
    assert [len(family(n)) for n in FAMILIES] == [48, 48, 8]


def _acc(arm: str, s: str) -> list[float]:
    return [100 * float(r[f"{s}_acc"]) for r in ROWS if r["arm"] == arm]


def test_the_figure_paragraph():
    base = {s: _acc("as_is", s)[0] for s in SETS}
    assert all(v < base[s] for s in SETS for v in _acc("sphereface", s))
    others = [a for a in TRAINED if a != "sphereface"]
    deviation = max(abs(v - base[s]) for a in others for s in SETS for v in _acc(a, s))
    assert f"{deviation:.2f}" == "0.53" and deviation <= 0.54
    one_sided = [(a, s) for a in others for s in SETS if max(_acc(a, s)) < base[s] or min(_acc(a, s)) > base[s]]
    assert one_sided == [("curricularface", "cfp_fp")]
    assert "within 0.54 points of the `as_is` value" in _text()


def test_the_sentences_of_the_answers():
    text = _text()
    q1 = {(c.a.arm, c.a.metric): (c, p) for c, p in family("Q1")}
    sphere = [q1[("sphereface", f"{s}_acc")] for s in SETS]
    assert max(p for _, p in sphere) < 2.73e-05 and "Holm p ≤ 2.72e-05" in text
    triplet_lfw = q1[("triplet", "lfw_acc")][0]
    assert 6000 * abs(triplet_lfw.difference) < 4 and "under 4 of the 6,000 pairs" in text
    tars = [q1[(a, "lfw_8px_q30_tar")] for a in MARGIN]
    assert max(p for _, p in tars) < 0.00135 and "Holm p ≤ 0.0013" in text
    assert all(c.difference > 0 for c, _ in tars)
    stated = "ArcFace 5.94, CosFace 6.33, SphereFace 5.70, CurricularFace 6.47"
    assert ", ".join(f"{n} {100 * c.a.mean:.2f}" for n, (c, _) in zip(
        ["ArcFace", "CosFace", "SphereFace", "CurricularFace"], tars)) == stated and stated in text
    means = {a: sum(sum(_acc(a, s)) / 10 for s in SETS) / 4 for a in MARGIN}
    order = sorted(MARGIN, key=lambda a: -means[a])
    names = {"arcface": "ArcFace", "cosface": "CosFace", "sphereface": "SphereFace", "curricularface": "CurricularFace"}
    assert "order of the mean over the four sets is " + ", ".join(f"{names[a]} {means[a]:.2f}" for a in order) in text


def test_the_cost_numbers():
    import json

    text = _text()
    trained = [float(r["train_wall_s"]) for r in ROWS if r["arm"] != "as_is"]
    evals = [float(r["eval_wall_s"]) for r in ROWS]
    assert len(trained) == 60 and f"{sum(trained) / 60:.1f} s on average over the 60 trained runs" in text
    assert f"{sum(evals) / 70:.1f} s on average per run" in text
    assert f"{sum(trained):,.0f} s of training and {sum(evals):,.0f} s of evaluation" in text
    seconds = json.loads((ROOT / "docs" / "results" / "ms1m_embedding_block_run.json").read_text())["extract_seconds"]
    for name, label in [("train", "the training images"), ("lfw", "LFW"), ("lfw_8px_q30", "LFW-8px"),
                        ("cfp_fp", "CFP-FP"), ("cfp_ff", "CFP-FF")]:
        assert f"{label} {seconds[name]:,.0f} s" in text
    total = sum(seconds.values())
    assert f"{total:,.0f} s ≈ {total / 60:.0f} thread-minutes" in text
    assert f"≈ {(total + sum(trained) + sum(evals)) / 60:.0f} thread-minutes" in text
