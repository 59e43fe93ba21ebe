"""Score a cleaning list against cases reviewed by eye: precision and recall over the reviewed cases only.

A reviewed-cases file (``docs/results/cleaning_reviewed_cases.tsv``) holds one case a line,
``task<TAB>case<TAB>verdict<TAB>in_lists[<TAB>note]``, ``#`` comments, and a ``task`` header line:

* ``task``: ``overlap_lfw`` / ``overlap_cfp`` / ``duplicates`` / ``outliers``;
* ``case``: ``train~test`` for overlap, ``a~b`` for duplicates (either order), ``identity/stem`` for outliers;
  a ``?`` side means the identity is unknown: such a case counts for the lists its ``in_lists`` names (their
  precision) but never matches a flag;
* ``verdict``: ``real``, ``false`` or ``border`` (could not tell: in neither precision nor recall);
* ``in_lists``: comma-separated names of the lists known to hold the case (``-`` for none).

Precision = real / (real + false) among the reviewed cases a list flags; recall = the real reviewed cases it
flags / all real reviewed cases of the task. Both say nothing about cases nobody reviewed: the list's
unreviewed flags are returned so that someone can look at them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from marginface.data.lists import read_lines

TASKS = ("overlap_lfw", "overlap_cfp", "duplicates", "outliers")
VERDICTS = ("real", "false", "border")


@dataclass(frozen=True)
class Case:
    """One reviewed case: task, canonical key (:func:`case_key`), verdict, lists known to hold it, note."""

    task: str
    key: str
    verdict: str
    in_lists: tuple[str, ...]
    note: str = ""

    @property
    def matchable(self) -> bool:
        """False when one side is unknown (``?``): the case cannot be looked up in a list."""
        return "?" not in self.key.replace("~", "/").split("/")


def case_key(task: str, case: str) -> str:
    """Canonical key: duplicate pairs sorted (``b~a`` -> ``a~b``), outlier images without their extension."""
    if task == "duplicates":
        return "~".join(sorted(case.split("~")))
    if task == "outliers":
        identity, _, file = case.partition("/")
        return f"{identity}/{file.rsplit('.', 1)[0] if '.' in file else file}"
    return case


def read_cases(path: str | Path) -> list[Case]:
    """The reviewed cases of ``path`` (format in the module docstring); a malformed line names itself."""
    cases, seen = [], set()
    for line in read_lines(path, "reviewed-cases file"):
        fields = line.split("\t")
        if fields[0] == "task":
            continue
        if len(fields) < 4 or fields[0] not in TASKS or fields[2] not in VERDICTS:
            raise ValueError(f"reviewed-cases file {path}: line {line!r} must be task<TAB>case<TAB>verdict<TAB>"
                             f"in_lists with task in {TASKS} and verdict in {VERDICTS}")
        key = case_key(fields[0], fields[1])
        if (fields[0], key) in seen and "?" not in key:
            raise ValueError(f"reviewed-cases file {path}: {fields[0]} {key} is listed twice")
        seen.add((fields[0], key))
        lists = tuple(x for x in fields[3].split(",") if x and x != "-")
        cases.append(Case(fields[0], key, fields[2], lists, fields[4] if len(fields) > 4 else ""))
    return cases


@dataclass(frozen=True)
class Score:
    """A list's flags against one task's reviewed cases (counts, precision, recall; NaN when undefined)."""

    flagged: int  #: the list's flags for this task
    reviewed: int  #: of them, matched to a reviewed case
    real: int
    false: int
    border: int
    real_total: int  #: real reviewed cases of the task (recall's denominator)
    precision: float
    recall: float
    unreviewed: tuple[str, ...]  #: flags that match no reviewed case


def score(cases: Iterable[Case], task: str, flagged: Iterable[str], list_name: str | None = None) -> Score:
    """Score the flagged keys of one task (any order; keys are canonicalised) against the reviewed cases.

    ``list_name``: the cases with an unknown side that this list is known to hold (``in_lists``) count as
    reviewed flags of it too (the flags column then includes them)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    cases = [c for c in cases if c.task == task]
    verdict = {c.key: c.verdict for c in cases if c.matchable}
    flags = list(dict.fromkeys(case_key(task, f) for f in flagged))
    unnamed = [c.verdict for c in cases if not c.matchable and list_name is not None and list_name in c.in_lists]
    hits = [verdict[f] for f in flags if f in verdict] + unnamed
    real, false, border = (hits.count(v) for v in VERDICTS)
    real_total = sum(1 for v in verdict.values() if v == "real")
    nan = float("nan")
    return Score(len(flags) + len(unnamed), len(hits), real, false, border, real_total,
                 real / (real + false) if real + false else nan, real / real_total if real_total else nan,
                 tuple(f for f in flags if f not in verdict))


def known_flags(cases: Iterable[Case], task: str, list_name: str) -> list[str]:
    """The reviewed cases of ``task`` that ``list_name`` is known to hold (its other flags are unknown here)."""
    return [c.key for c in cases if c.task == task and c.matchable and list_name in c.in_lists]


def flags_from_run(out: str | Path, task: str) -> dict[str, float]:
    """``{key: distance}`` of a ``marginface clean`` output folder: overlap.tsv (the test set whose name starts
    with ``lfw`` / ``cfp`` for ``overlap_lfw`` / ``overlap_cfp``), duplicates.tsv or outliers.tsv."""
    out = Path(out)
    if task.startswith("overlap_"):
        prefix = task.split("_", 1)[1]
        rows = [line.split("\t") for line in read_lines(out / "overlap.tsv", "overlap list")]
        return {f"{r[0]}~{r[2]}": float(r[3]) for r in rows if r[1].startswith(prefix)}
    name = {"duplicates": "duplicates.tsv", "outliers": "outliers.tsv"}[task]
    rows = [line.split("\t") for line in read_lines(out / name, f"{task} list")]
    if task == "duplicates":
        return {case_key(task, f"{r[0]}~{r[1]}"): float(r[2]) for r in rows}
    return {case_key(task, r[0]): float(r[1]) for r in rows}


def score_table(cases: list[Case], lists: Mapping[str, Mapping[str, Iterable[str]]],
                sizes: Mapping[tuple[str, str], int] | None = None) -> list[str]:
    """Markdown rows ``| task | list | flags | reviewed: real / false / border | precision | recall |``.

    ``lists``: list name -> task -> flagged keys. ``sizes``: the full length of a list of which only some flags
    are given (e.g. :func:`known_flags`); the flags column then reads ``size (given)``.
    """
    rows = []
    for task in TASKS:
        for name, by_task in lists.items():
            if task not in by_task:
                continue
            s = score(cases, task, by_task[task], name)
            size = (sizes or {}).get((name, task))
            p = "n/a" if s.precision != s.precision else f"{s.precision:.2f}"
            r = "n/a" if s.recall != s.recall else f"{s.recall:.2f}"
            rows.append(f"| {task} | {name} | {s.flagged if size is None else f'{size} ({s.flagged} known)'} | "
                        f"{s.reviewed}: {s.real} / {s.false} / {s.border} | {p} ({s.real}/{s.real + s.false}) | "
                        f"{r} ({s.real}/{s.real_total}) |")
    return rows
