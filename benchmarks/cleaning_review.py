"""docs/cleaning.md's comparison of cleaning lists against the cases reviewed by eye (precision / recall).

Ground truth: ``docs/results/cleaning_reviewed_cases.tsv`` (the docs' reviewed cases and verdicts). Lists:

* ``dlib`` overlap, ``ours``, ``dlib-lfw3``: only the flags the docs name (those lists were not kept), with the
  list sizes the docs give;
* ``dlib`` duplicates and outliers (re-run on 2026-12-07; the same 5 pairs and 68 + 192 images as the docs) and
  ``ms1m*`` (insightface's MS1M MobileFaceNet): every flag, from ``docs/results/cleaning_flags.tsv``, which
  ``--from-runs CLEAN_DIR`` writes from the ``marginface clean`` output folders named in ``RUNS``.

    python benchmarks/cleaning_review.py [--from-runs /work/cache/i30c/clean]

Prints the table rows of docs/cleaning.md (tests/cleaning/test_reviewed.py checks they are there): against the
2026-12-02 review alone, then with the 2026-12-07 review of the MS1M flags nobody had looked at
(``docs/results/cleaning_reviewed_cases_ms1m.tsv``) added; then the flags of the complete lists that match no
reviewed case.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from marginface.cleaning.reviewed import TASKS, flags_from_run, known_flags, read_cases, score, score_table
from marginface.data.lists import read_lines, write_lines

ROOT = Path(__file__).resolve().parents[1]
REVIEWED = ROOT / "docs" / "results" / "cleaning_reviewed_cases.tsv"
NEW_REVIEW = ROOT / "docs" / "results" / "cleaning_reviewed_cases_ms1m.tsv"  # the 2026-12-07 look at MS1M's flags
FLAGS = ROOT / "docs" / "results" / "cleaning_flags.tsv"

#: the docs' list sizes for the lists of which only the reviewed flags are known (docs/cleaning.md, 2026-12-02)
DOCS_SIZES = {("dlib", "overlap_lfw"): 33, ("dlib", "overlap_cfp"): 6, ("ours", "overlap_lfw"): 28,
              ("ours", "duplicates"): 9, ("ours", "outliers"): 70, ("dlib-lfw3", "overlap_lfw"): 74}
DOCS_LISTS = {"dlib": ("overlap_lfw", "overlap_cfp"),
              "ours": ("overlap_lfw", "duplicates", "outliers"), "dlib-lfw3": ("overlap_lfw",)}
#: list name -> task -> the ``marginface clean`` output folder (under --from-runs) that holds it
RUNS = {
    "dlib": {"duplicates": "duplicates_dlib", "outliers": "outliers_dlib"},
    "dlib-threshold": {"outliers": "outliers_thr_dlib"},
    "ms1m": {"overlap_lfw": "overlap_lfw_ms1m", "overlap_cfp": "overlap_cfp_ms1m", "duplicates": "duplicates_ms1m",
             "outliers": "outliers_ms1m"},
    "ms1m-threshold": {"outliers": "outliers_thr_ms1m"},
    "ms1m-all": {"duplicates": "duplicates_all_ms1m", "outliers": "outliers_all_ms1m"},
    "ms1m-all-threshold": {"outliers": "outliers_thr_all_ms1m"},
}


def write_flags(clean_dir: Path, path: Path = FLAGS) -> None:
    """Collect every list's flags from the run folders into one small text file."""
    rows = []
    for name, tasks in RUNS.items():
        for task, run in tasks.items():
            if (clean_dir / run).is_dir():
                rows += [f"{name}\t{task}\t{key}\t{d:.4f}" for key, d in flags_from_run(clean_dir / run, task).items()]
    write_lines(path, rows, "list\ttask\tcase\tdistance: every flag of the re-run dlib and the MS1M model's "
                "cleaning lists (benchmarks/cleaning_review.py --from-runs; the runs of docs/cleaning.md)")


def read_flags(path: Path = FLAGS) -> dict[str, dict[str, list[str]]]:
    """list name -> task -> flagged keys, from the file :func:`write_flags` writes."""
    out: dict[str, dict[str, list[str]]] = {}
    for line in read_lines(path, "flags file"):
        name, task, key, _ = line.split("\t")
        out.setdefault(name, {}).setdefault(task, []).append(key)
    return out


def tables(with_new_review: bool) -> tuple[str, list[str], list[str]]:
    """(summary line, table rows, unreviewed-flag lines) against the 2026-12-02 review (+ the new one)."""
    cases = read_cases(REVIEWED) + (read_cases(NEW_REVIEW) if with_new_review else [])
    lists = {name: {t: known_flags(cases, t, name) for t in tasks} for name, tasks in DOCS_LISTS.items()}
    full = read_flags() if FLAGS.is_file() else {}
    for name, by_task in full.items():
        lists.setdefault(name, {}).update(by_task)
    summary = (f"{len(cases)} reviewed cases ({sum(c.matchable for c in cases)} with both sides named): "
               + ", ".join(f"{t} {sum(c.task == t for c in cases)}" for t in TASKS))
    left = [f"{name} {task}: {len(u)} unreviewed flags: {' '.join(u)}" for name, by_task in full.items()
            for task, keys in by_task.items() if (u := score(cases, task, keys).unreviewed)]
    for name in ("dlib", "ms1m"):  # the top of each full outlier list (flags are stored worst first)
        top = full.get(name, {}).get("outliers", [])[:24]
        s = score(cases, "outliers", top)
        left.append(f"{name} outliers, top {len(top)}: {s.real} real / {s.false} false / {s.border} border / "
                    f"{len(s.unreviewed)} unreviewed")
    tops = [full.get(n, {}).get("outliers", [])[:24] for n in ("dlib", "ms1m")]
    left.append(f"top 24 outliers in both dlib's and ms1m's: {len(set(tops[0]) & set(tops[1]))}")
    return summary, score_table(cases, lists, DOCS_SIZES), left


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-runs", type=Path, default=None, help="write the flags file from these runs first")
    args = parser.parse_args()
    if args.from_runs is not None:
        write_flags(args.from_runs)
    for title, new in (("2026-12-02 review", False), ("2026-12-02 + 2026-12-07 reviews", True)):
        summary, rows, left = tables(new)
        print(f"\n{title}: {summary}")
        print("| task | list | flags | reviewed: real / false / border | precision | recall |")
        print("|---|---|---|---|---|---|")
        print("\n".join(rows))
    print("\n".join(left))


if __name__ == "__main__":
    main()
