"""What a run folder remembers between starts, and the checks a resume makes against it.

A run folder holds ``config.json`` (the configuration of the run, in steps) and ``history.jsonl`` (one line per
start: time, the step it started from, the number of processes, the data's size, and what changed). When a run
folder with a checkpoint is started again, the new configuration is compared with the saved one:

* **breaking** changes -- the model, the loss (name, parameters, Partial FC), the data (source, path, filters, or a
  different number of identities/images found), the batch size, the seed -- cannot
  continue the saved run: the start is refused with the differences and the two ways out (``--fresh``, or a new
  ``output_dir``);
* **schedule** changes -- learning rate, milestones, decay factor, warm-up, number of steps, gradient clipping,
  precision -- are allowed only with ``--allow-schedule-change`` and recorded in the history;
* **run settings** (logging and checkpoint intervals, validation, device, loader workers, ...) change nothing
  that was learned: they are allowed and recorded. So are the **placement of the class centres** -- the number
  of processes, ``loss.sharded``, the chunk size, the fused update, and a dense <-> chunked head (the same
  mathematics): ``training/reshard.py`` re-cuts the saved centres for the new placement. (Partial FC's sampling
  is part of what is learned: a change to or from ``partial_fc`` stays breaking.)

``config.json`` is never overwritten silently: it is replaced (atomically) only after these checks passed, and
every start is a line of ``history.jsonl``.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marginface.errors import UserError
from marginface.files import atomic_write_text
from marginface.runs.layout import HISTORY, RunDir  # noqa: F401  (HISTORY: moved to runs.layout; one release)
from marginface.training.config import resume_kinds

#: How a change of each key (flattened ``section.field``, or a ``section.`` prefix) is treated, declared on the
#: fields themselves (``field(metadata=SCHEDULE)`` ... in ``training/config.py``); an undeclared key is breaking.
_KINDS = resume_kinds()
#: Keys whose change the saved state survives: the optimisation schedule.
SCHEDULE_KEYS = frozenset(k for k, kind in _KINDS.items() if kind == "schedule")
#: Keys (or ``section.`` prefixes) that change how the run is watched or executed, not what it learns.
RUN_SETTING_KEYS = frozenset(k for k, kind in _KINDS.items() if kind == "setting")
#: Keys that say where the class centres live and how their logits are computed, not what is learned.
PLACEMENT_KEYS = frozenset(k for k, kind in _KINDS.items() if kind == "placement")
#: Head kinds computing the same loss (a change between them is a placement change).
SAME_MATHS_HEADS = frozenset({"dense", "chunked"})
#: Facts (what a run found, not what it was told) that may change on resume; the others are breaking.
SETTING_FACTS = frozenset({"world_size"})
ABSENT = "<absent>"  # a key one of the two configurations does not have


class ResumeError(UserError):
    """The saved run cannot continue under the new configuration; the message lists the differences."""


@dataclass(frozen=True)
class Change:
    """One difference between the saved and the new configuration."""

    key: str
    old: Any
    new: Any
    kind: str  # "breaking", "schedule" or "setting"

    def line(self) -> str:
        return f"  {self.key}: {json.dumps(self.old)} -> {json.dumps(self.new)}"


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"loss": {"params": {"scale": 64}}}`` -> ``{"loss.params.scale": 64}``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def kind_of(key: str, old: Any = None, new: Any = None) -> str:
    """'schedule', 'setting' or 'breaking' (anything not known to be harmless: new fields are safe by default).
    ``old`` / ``new`` matter for ``loss.head`` only (dense <-> chunked is a setting, partial_fc is not)."""
    if key in SCHEDULE_KEYS:
        return "schedule"
    if any(key == k or (k.endswith(".") and key.startswith(k)) for k in RUN_SETTING_KEYS) or key in PLACEMENT_KEYS:
        return "setting"
    if key == "loss.head" and {old, new} <= SAME_MATHS_HEADS:
        return "setting"
    return "breaking"


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """Every key whose value differs between two nested config mappings, classified by :func:`kind_of`."""
    old_flat, new_flat = flatten(saved), flatten(new)
    keys = sorted(set(old_flat) | set(new_flat))
    missing = object()
    changes = []
    for key in keys:
        old, value = old_flat.get(key, missing), new_flat.get(key, missing)
        if old != value:
            old, value = ABSENT if old is missing else old, ABSENT if value is missing else value
            changes.append(Change(key, old, value, kind_of(key, old, value)))
    return changes


def last_start(run_dir: str | Path) -> dict[str, Any]:
    """The newest line of the run's history (empty when there is none)."""
    return RunDir(run_dir).last_start()


def _facts_changes(run_dir: Path, facts: dict[str, int]) -> list[Change]:
    """Changes of what the config does not say: number of processes (a setting: the centres are re-cut for it),
    identities and images found (breaking)."""
    before = last_start(run_dir).get("facts", {})
    return [Change(key, before[key], value, "setting" if key in SETTING_FACTS else "breaking")
            for key, value in facts.items() if key in before and before[key] != value]


def check_resume(
    run_dir: str | Path, config: dict[str, Any], facts: dict[str, int], allow_schedule_change: bool = False,
    has_checkpoint: bool = True,
) -> list[Change]:
    """Compare a new start of ``run_dir`` with what it saved; return the changes, or raise :class:`ResumeError`.

    Args:
        run_dir: the run folder (``output_dir``).
        config: the new configuration as a nested mapping (``config_to_dict``), in steps.
        facts: what the run found rather than configured, e.g. ``{"world_size": 2, "identities": 298,
            "images": 5960}``; compared with the last start recorded in ``history.jsonl``.
        allow_schedule_change: accept schedule changes (``--allow-schedule-change``).
        has_checkpoint: whether there is anything to resume. Without a checkpoint the run starts anew: every
            change is accepted, and returned so that the banner and the history show what replaced config.json.
    """
    run = RunDir(run_dir)
    if not run.config.is_file():
        return []
    changes = config_changes(run.read_config(), config)
    if not has_checkpoint:
        return changes
    changes += _facts_changes(run_dir, facts)
    breaking = [c for c in changes if c.kind == "breaking"]
    schedule = [c for c in changes if c.kind == "schedule"]
    ways_out = (f"start again with `fresh=True` (deletes {run_dir}), or choose a new output_dir "
                "(e.g. output_dir=runs/new)")
    if breaking:
        raise ResumeError("\n".join([f"{run_dir} holds a run that this configuration cannot continue:",
                                     *[c.line() for c in breaking], ways_out]))
    if schedule and not allow_schedule_change:
        raise ResumeError("\n".join([f"{run_dir}: the schedule differs from the saved run's:",
                                     *[c.line() for c in schedule],
                                     "to continue with it, add `allow_schedule_change=True` (recorded in "
                                     f"{run.history}); or {ways_out}"]))
    return changes


def record_start(
    run_dir: str | Path, config: dict[str, Any], step: int, facts: dict[str, int], changes: list[Change]
) -> None:
    """Write ``config.json`` (atomically) and append this start to ``history.jsonl`` (main process only)."""
    run = RunDir(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.config, json.dumps(config, indent=2))
    entry = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "event": "resume" if step else "start",
        "step": step,
        "facts": facts,
        "changes": [{"key": c.key, "old": c.old, "new": c.new, "kind": c.kind} for c in changes],
    }
    with open(run.history, "a", newline="\n") as handle:
        handle.write(json.dumps(entry) + "\n")
