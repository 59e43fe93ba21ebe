"""``log.csv``: a run's logged numbers, one ``step,key,value`` row each (LF line endings, values ``%.8g``).

Written by the trainer's main process (append-only; a resumed run first drops the rows past its checkpoint with
:func:`truncate_log`), read by the figures and the tests with :func:`read_log`. One long table rather than a
column per key, so that a key logged at other steps (validation, theta histograms) needs no empty cells.
An AM-LFS search's log has another schema and a name of its own (``search_log.csv``); a search written before
that kept it as ``log.csv``, which :func:`read_log` recognises and refuses with the way to read it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path

from marginface.files import atomic_write_text
from marginface.runs.layout import LOG

HEADER = ("step", "key", "value")


def append_log(path: Path, step: int, values: Mapping[str, float]) -> None:
    """Append one row per value (the header first when the file is new)."""
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")  # csv's default is CRLF
        if new:
            writer.writerow(HEADER)
        for key, value in values.items():
            writer.writerow([step, key, f"{value:.8g}"])


def truncate_log(path: Path, last_step: int) -> None:
    """Keep the header and the rows of steps <= ``last_step`` (atomic: temporary file + rename)."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) <= last_step]
    if len(kept) == len(rows):
        return
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(kept)
    atomic_write_text(path, buffer.getvalue())


def read_log(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """A run's log as ``{key: [(step, value), ...]}``, steps ascending; a step logged twice (after a resume)
    keeps the last value. ``path`` is the run folder (or a ``.csv`` file of this schema)."""
    path = Path(path)
    if path.suffix != ".csv":
        path = path / LOG
    series: dict[str, dict[int, float]] = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames and tuple(reader.fieldnames[:3]) != HEADER:
            raise ValueError(f"{path} is not a training log (its columns are {', '.join(reader.fieldnames[:4])}..., "
                             f"not {','.join(HEADER)}): an AM-LFS search's log; read it with the csv module (the "
                             "search figure's numbers: read_search of the search's module)")
        for row in reader:
            series.setdefault(row["key"], {})[int(row["step"])] = float(row["value"])
    return {k: sorted(v.items()) for k, v in series.items()}
