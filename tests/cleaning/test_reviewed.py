import math
from pathlib import Path

import numpy as np
import pytest

from marginface.cleaning.reviewed import (
    case_key,
    flags_from_run,
    known_flags,
    read_cases,
    score,
    score_table,
)

ROOT = Path(__file__).resolve().parents[2]
REVIEWED = ROOT / "docs" / "results" / "cleaning_reviewed_cases.tsv"

SAMPLE = """# comment
task\tcase\tverdict\tin_lists\tnote
outliers\t07307/185382\treal\tdlib
outliers\t07449/041699.jpg\treal\tdlib,ours\tboth
outliers\t07463/008907\tfalse\tdlib
outliers\t07360/188500\tborder\tours
duplicates\t07393~07392\treal\tdlib
overlap_lfw\t?~Andy_Bryant\tfalse\tours
overlap_lfw\t07355~Noel_Niell\treal\t-
"""


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "cases.tsv"
    path.write_text(SAMPLE)
    return read_cases(path)


def test_keys_are_canonical(sample):
    assert case_key("duplicates", "07393~07392") == "07392~07393"
    assert case_key("outliers", "07449/041699.jpg") == "07449/041699"
    assert [c.key for c in sample if c.task == "duplicates"] == ["07392~07393"]
    assert not next(c for c in sample if c.key == "?~Andy_Bryant").matchable
    assert next(c for c in sample if c.key == "07355~Noel_Niell").in_lists == ()


def _naive(verdicts: dict[str, str], flags: list[str]) -> tuple[float, float]:
    """Precision and recall by counting one flag at a time (float64)."""
    tp = fp = 0
    for f in set(flags):
        if verdicts.get(f) == "real":
            tp += 1
        elif verdicts.get(f) == "false":
            fp += 1
    real = sum(v == "real" for v in verdicts.values())
    return (tp / (tp + fp) if tp + fp else math.nan), (tp / real if real else math.nan)


def test_score_matches_a_naive_count_on_random_lists(tmp_path):
    rng = np.random.default_rng(0)
    keys = [f"{i:05d}/{j:06d}" for i in range(20) for j in range(3)]
    verdicts = {k: str(rng.choice(["real", "false", "border"])) for k in keys[:40]}
    path = tmp_path / "c.tsv"
    path.write_text("".join(f"outliers\t{k}\t{v}\t-\n" for k, v in verdicts.items()))
    cases = read_cases(path)
    for trial in range(20):
        flags = [str(k) + (".jpg" if trial % 2 else "") for k in rng.choice(keys, size=int(rng.integers(0, 30)))]
        s = score(cases, "outliers", flags)
        p, r = _naive(verdicts, [case_key("outliers", f) for f in flags])
        assert (math.isnan(p) and math.isnan(s.precision)) or s.precision == pytest.approx(p)
        assert s.recall == pytest.approx(r)
        assert set(s.unreviewed) == {case_key("outliers", f) for f in flags} - set(verdicts)
        assert s.reviewed == s.real + s.false + s.border == s.flagged - len(s.unreviewed)


def test_score_counts_and_border_cases(sample):
    s = score(sample, "outliers", ["07307/185382.jpg", "07463/008907", "07360/188500", "07000/000001", "07307/185382"])
    assert (s.flagged, s.reviewed, s.real, s.false, s.border, s.real_total) == (4, 3, 1, 1, 1, 2)
    assert (s.precision, s.recall, s.unreviewed) == (0.5, 0.5, ("07000/000001",))
    empty = score(sample, "overlap_cfp", [])
    assert math.isnan(empty.precision) and math.isnan(empty.recall)
    # the unknown side never matches: a flag "?~Andy_Bryant" is an unreviewed flag
    assert score(sample, "overlap_lfw", ["?~Andy_Bryant"]).unreviewed == ("?~Andy_Bryant",)
    # ... but it counts for the list that is known to hold it
    s = score(sample, "overlap_lfw", ["07355~Noel_Niell"], "ours")
    assert (s.flagged, s.reviewed, s.real, s.false, s.precision, s.recall) == (2, 2, 1, 1, 0.5, 1.0)
    assert score(sample, "overlap_lfw", [], "dlib").flagged == 0
    assert known_flags(sample, "outliers", "ours") == ["07449/041699", "07360/188500"]


def test_table_rows(sample):
    rows = score_table(sample, {"dlib": {t: known_flags(sample, t, "dlib") for t in ("outliers", "duplicates")}},
                       {("dlib", "outliers"): 24})
    assert rows == ["| duplicates | dlib | 1 | 1: 1 / 0 / 0 | 1.00 (1/1) | 1.00 (1/1) |",
                    "| outliers | dlib | 24 (3 known) | 3: 2 / 1 / 0 | 0.67 (2/3) | 1.00 (2/2) |"]


def test_bad_lines_name_themselves(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text("outliers\t07307/185382\tmaybe\tdlib\n")
    with pytest.raises(ValueError, match="maybe"):
        read_cases(path)
    path.write_text("outliers\ta/1\treal\t-\noutliers\ta/1.jpg\tfalse\t-\n")
    with pytest.raises(ValueError, match="listed twice"):
        read_cases(path)


def test_flags_from_run_reads_the_clean_outputs(tmp_path):
    (tmp_path / "overlap.tsv").write_text("# header\n07355\tlfw_cap1_ms1m\tNoel_Niell\t0.2\n"
                                          "07270\tcfp_frontal4\t365\t0.1\n")
    (tmp_path / "duplicates.tsv").write_text("07393\t07392\t0.05\n")
    (tmp_path / "outliers.tsv").write_text("07307/185382.jpg\t0.9\n")
    assert flags_from_run(tmp_path, "overlap_lfw") == {"07355~Noel_Niell": 0.2}
    assert flags_from_run(tmp_path, "overlap_cfp") == {"07270~365": 0.1}
    assert flags_from_run(tmp_path, "duplicates") == {"07392~07393": 0.05}
    assert flags_from_run(tmp_path, "outliers") == {"07307/185382": 0.9}


def test_the_committed_reviewed_cases_match_the_docs_counts():
    """docs/cleaning.md: CFP 4 same + 2 different; LFW: dlib's 33 (Noel Niell, Oxana Fedorova as re-judged, the
    Daniel Zelman border, 30 different), ours 28 (Noel Niell + 27 different); dlib's duplicates 5 + ours 9 (one
    shared, the real one); dlib's 24 reviewed outliers (12 / 5 / 7) and ours 27 (3 / 9 / 15), 5 images in both."""
    cases = read_cases(REVIEWED)

    def count(task, verdict, lst=None):
        return sum(c.task == task and c.verdict == verdict and (lst is None or lst in c.in_lists) for c in cases)

    assert (count("overlap_cfp", "real"), count("overlap_cfp", "false")) == (4, 2)
    assert [count("overlap_lfw", v, "dlib") for v in ("real", "false", "border")] == [2, 30, 1]
    assert [count("overlap_lfw", v, "ours") for v in ("real", "false", "border")] == [1, 27, 0]
    assert [count("duplicates", v) for v in ("real", "false")] == [1, 12]
    assert len(known_flags(cases, "duplicates", "dlib")) == 5 and len(known_flags(cases, "duplicates", "ours")) == 9
    assert [count("outliers", v, "dlib") for v in ("real", "false", "border")] == [12, 5, 7]
    # ours: its 27 reviewed (3 / 9 / 15) plus 07465/004058, which the docs name among its 70 flags
    assert [count("outliers", v, "ours") for v in ("real", "false", "border")] == [4, 9, 15]
    assert [count("outliers", v) for v in ("real", "false", "border")] == [12, 14, 20]


def test_docs_cleaning_shows_the_tables_the_committed_lists_give():
    """Every row of benchmarks/cleaning_review.py's two tables (from the committed flag lists and reviews) is in
    docs/cleaning.md as printed, so the docs' precision/recall cannot drift from the lists."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cleaning_review", ROOT / "benchmarks" / "cleaning_review.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    docs = (ROOT / "docs" / "cleaning.md").read_text()
    for new_review in (False, True):
        summary, rows, _ = module.tables(new_review)
        assert summary in docs
        for row in rows:
            assert row in docs, row
