"""A study: training runs of one preset (arms x seeds), each evaluated once on fixed ``.bin`` sets; resumable.

A study is what a loss comparison needs to be reproducible and honest: one committed spec, one command, every
run's raw numbers in one CSV, the spread over seeds in the summary. The spec (YAML, e.g.
``configs/study/celeba299_losses.yaml``)::

    preset: configs/celeba299_mobilefacenet_arcface.yaml   # the base config of every run
    overrides: [data.path=../cache/celeba112, "validation.bins=[]"]  # key=value, applied to every run
    seeds: [0, 1, 2]
    arms:                                                   # arm name -> its own key=value overrides
      softmax: [loss.name=softmax]
      arcface: [loss.name=arcface, "loss.params={scale: 16.0, margin: 0.5}"]
    eval: {bins: [../cache/lfw.bin], flip: false}           # evaluated on the final checkpoint of each run
    lanes: 2                                                # runs side by side, cpu_count // lanes threads each

Each run is exactly ``marginface train --config PRESET OVERRIDES ARM_OVERRIDES seed=S output_dir=OUT/ARM_sS``
(``--dry-run`` prints these commands), then ``marginface eval --checkpoint <final step> --bins ... --json``: the
library calls behind them, each in a child process (``python -m marginface.experiments.study_worker``, see
:mod:`study_worker`) so that the lanes run in parallel with a fixed number of threads each; the evaluation's JSON
comes back as ``OUT/logs/ARM_sS.eval.json``, which the worker writes. ``OUT/results.csv`` gets a
row per evaluated run (written atomically), ending with the environment it was computed in (torch, numpy and
python versions, the marginface commit and whether tracked files had uncommitted changes, the device with its CPU
model or GPU name, torch's intra-op threads: ``environment.FIELDS``; empty in rows written before they were
recorded; a run trained by an earlier invocation records the environment of the one that evaluated it, so
keep one output folder per install). Rerunning the command skips runs that have their row, evaluates
trained runs that lack it, and resumes half-trained ones from their last checkpoint (the trainer's own resume);
a failed run is reported with its log and the others go on.
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marginface.experiments import study_stats
from marginface.files import atomic_write_text
from marginface.runs.layout import RunDir
from marginface.training import environment

#: results.csv columns before the per-set ones
BASE_COLUMNS = ["arm", "seed", "steps", "train_wall_s", "eval_wall_s"]
#: per verification set: 10-fold accuracy, its std over the folds, TAR at this FAR
SET_FIELDS = ["acc", "acc_std", "tar"]
#: how a study's runs are made (``runner:`` in the spec; default: the trainer)
RUNNERS = ("trainer", "embedding_block")


@dataclass(frozen=True)
class StudySpec:
    """A study's runs and evaluation (see the module docstring for the YAML form).

    Attributes:
        preset: base config of every run (a preset name or YAML path, as ``marginface train --config``).
        arms: arm name -> that arm's ``key=value`` overrides (loss, its parameters, ...).
        seeds: the seeds every arm is run with.
        overrides: ``key=value`` overrides applied to every run (before the arm's).
        bins: ``.bin`` verification sets evaluated on each run's final checkpoint.
        flip: flip test-time augmentation in the evaluation.
        far: the FAR at which TAR is reported.
        lanes: runs trained side by side; each gets ``cpu_count // lanes`` intra-op threads.
        runner: ``"trainer"`` (``marginface train`` + ``eval`` per run) or ``"embedding_block"`` (issue 30's CPU
            variant: only the embedding block trains, on cached trunk features; ``experiments/embedding_block_study``).
    """

    preset: str
    arms: dict[str, list[str]]
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)
    bins: list[str] = field(default_factory=list)
    flip: bool = True
    far: float = 1e-3
    lanes: int = 1
    runner: str = "trainer"

    def __post_init__(self) -> None:
        if self.runner not in RUNNERS:
            raise ValueError(f"runner {self.runner!r} is not one of {RUNNERS}")
        if not self.arms:
            raise ValueError("the study has no arms: give arms: {name: [key=value, ...], ...}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list without repeats, got {self.seeds}")
        if not self.bins:
            raise ValueError("the study evaluates nothing: give eval: {bins: [path.bin, ...]}")
        if self.lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {self.lanes}")
        for arm, values in self.arms.items():
            if not arm or "/" in arm or arm.startswith("."):
                raise ValueError(f"arm name {arm!r} must be a plain folder name")
            for item in [*self.overrides, *values]:
                if "=" not in str(item):
                    raise ValueError(f"arm {arm}: override {item!r} is not key=value")
        names = [Path(b).stem for b in self.bins]
        if len(set(names)) != len(names):
            raise ValueError(f"two eval sets share a name: {names} (the results are keyed by file stem)")


def load_study(path: str | Path) -> StudySpec:
    """Read a study spec; relative ``preset`` and ``bins`` paths are kept as written (resolved from the working
    directory, as ``marginface train`` resolves a config's paths)."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a study spec is a mapping (preset, arms, seeds, eval, ...)")
    known = {"preset", "arms", "seeds", "overrides", "eval", "lanes", "runner"}
    if unknown := sorted(set(raw) - known):
        raise ValueError(f"{path}: unknown key(s) {unknown}; a study spec has {sorted(known)}")
    ev = raw.get("eval") or {}
    arms = {str(k): [str(v) for v in (vals or [])] for k, vals in (raw.get("arms") or {}).items()}
    return StudySpec(preset=str(raw["preset"]), arms=arms, seeds=[int(s) for s in raw.get("seeds", [0])],
                     overrides=[str(v) for v in raw.get("overrides") or []], bins=[str(b) for b in ev.get("bins", [])],
                     flip=bool(ev.get("flip", True)), far=float(ev.get("far", 1e-3)), lanes=int(raw.get("lanes", 1)),
                     runner=str(raw.get("runner", "trainer")))


@dataclass(frozen=True)
class Run:
    """One training run of the study."""

    arm: str
    seed: int
    run_dir: Path
    log: Path


def plan(spec: StudySpec, out: str | Path) -> list[Run]:
    """Every run, seed-major (all arms of seed 0 first), so that a half-done study has whole seeds to compare."""
    out = Path(out)
    return [Run(arm, seed, out / f"{arm}_s{seed}", out / "logs" / f"{arm}_s{seed}.log")
            for seed in spec.seeds for arm in spec.arms]


def train_command(spec: StudySpec, run: Run) -> list[str]:
    """The exact ``marginface train`` command line of ``run``."""
    return ["marginface", "train", "--config", spec.preset, *spec.overrides, *spec.arms[run.arm],
            f"seed={run.seed}", f"output_dir={run.run_dir}"]


def final_checkpoint(run: Run) -> Path | None:
    """The final step's weights, if the run finished (its config.json says how many steps)."""
    return RunDir(run.run_dir).final_weights()


def eval_device(run: Run) -> str:
    """The device the run trained on (its config.json), so that a GPU study also evaluates on the GPU."""
    device = str(RunDir(run.run_dir).read_config().get("device", "cpu"))
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def columns(spec: StudySpec) -> list[str]:
    """results.csv's header: the run, its sets' figures, then its environment (older files lack the last; they
    read as before and get empty environment cells when the study next rewrites the file)."""
    return BASE_COLUMNS + [f"{Path(b).stem}_{f}" for b in spec.bins for f in SET_FIELDS] + environment.FIELDS


def read_results(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def finished(results: Path) -> set[tuple[str, str]]:
    """The (arm, seed) of every run with a row in ``results`` (seed as the CSV holds it: a string)."""
    return {(r["arm"], r["seed"]) for r in read_results(results)}


def status(run: Run, done: set[tuple[str, str]]) -> str:
    """'done' (has its results row), 'evaluate' (trained), 'resume' (a run folder without the final step), 'train'."""
    if (run.arm, str(run.seed)) in done:
        return "done"
    if final_checkpoint(run) is not None:
        return "evaluate"
    return "resume" if run.run_dir.exists() else "train"


def run_job(job: dict[str, Any], shown: list[str], log: Path, env: dict[str, str]) -> int:
    """Run a :mod:`study_worker` job in a child process with ``env``; its output is appended to ``log`` after the
    line ``$ <shown>`` (the ``marginface`` command the job equals). Returns its exit status."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(f"$ {' '.join(shown)}\n")
        f.flush()
        return subprocess.run([sys.executable, "-m", "marginface.experiments.study_worker", json.dumps(job)],
                              stdout=f, stderr=subprocess.STDOUT, env=env, check=False).returncode


def run_child(argv: list[str], log: Path, env: dict[str, str]) -> int:
    """Run a ``marginface`` command in a child process (``python -m marginface.cli``), output appended to ``log``.

    No longer what the study runs (it runs :func:`run_job`); kept for one release."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(f"$ {' '.join(argv)}\n")
        f.flush()
        return subprocess.run([sys.executable, "-m", "marginface.cli", *argv[1:]], stdout=f, stderr=subprocess.STDOUT,
                              env=env, check=False).returncode


class Study:
    """Runs a :class:`StudySpec` into ``out`` (see the module docstring); :meth:`run` returns the failed runs."""

    def __init__(self, spec: StudySpec, out: str | Path, threads: int | None = None) -> None:
        self.spec, self.out = spec, Path(out)
        self.threads = threads or max(1, (os.cpu_count() or 1) // spec.lanes)
        self.results = self.out / "results.csv"
        self._lock = threading.Lock()
        self._environments: dict[str, dict[str, str]] = {}

    def environment(self, device: str) -> dict[str, str]:
        """The environment of this study's runs on ``device`` (computed once per device, in a child process with
        the runs' thread settings: see ``environment.describe_in_child``)."""
        with self._lock:
            if device not in self._environments:
                self._environments[device] = environment.describe_in_child([device], self.env())[device]
            return self._environments[device]

    def env(self) -> dict[str, str]:
        threads = str(self.threads)
        return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}

    def run(self, progress: bool = True) -> list[tuple[Run, str]]:
        from tqdm.auto import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        self._write_spec()
        done = finished(self.results)
        todo = [r for r in plan(self.spec, self.out) if status(r, done) != "done"]
        failed: list[tuple[Run, str]] = []
        bar = tqdm(total=len(todo), desc="study runs", unit="run", disable=not progress)
        with ThreadPoolExecutor(max_workers=self.spec.lanes) as pool:
            for run, error in zip(todo, pool.map(self._one, todo), strict=True):
                bar.update()
                if error:
                    failed.append((run, error))
        bar.close()
        return failed

    def _one(self, run: Run) -> str:
        """Train (or resume) and evaluate one run; '' when its row is written, else what went wrong."""
        try:
            return self._train_and_evaluate(run)
        except (OSError, ValueError, KeyError) as err:  # one run's broken output must not stop the others
            return f"{type(err).__name__}: {err}; see {run.log}"

    def _train_and_evaluate(self, run: Run) -> str:
        timing_file = run.log.with_suffix(".json")
        timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {"train_wall_s": 0.0}
        if final_checkpoint(run) is None:
            command = train_command(self.spec, run)
            start = time.perf_counter()
            code = run_job({"task": "train", "preset": self.spec.preset, "overrides": command[4:]}, command, run.log,
                           self.env())
            timing["train_wall_s"] += time.perf_counter() - start
            atomic_write_text(timing_file, json.dumps(timing))
            if code != 0:
                return f"training exited with {code}; see {run.log}"
        checkpoint = final_checkpoint(run)
        if checkpoint is None:
            return f"training ended without a final checkpoint; see {run.log}"
        report = run.log.with_name(f"{run.arm}_s{run.seed}.eval.json")
        device = eval_device(run)
        argv = ["marginface", "eval", "--checkpoint", str(checkpoint), "--bins", *self.spec.bins, "--json",
                "--roc", "", "--device", device, *([] if self.spec.flip else ["--no-flip"])]
        job = {"task": "evaluate", "checkpoint": str(checkpoint), "bins": self.spec.bins, "flip": self.spec.flip,
               "device": device, "result": str(report)}
        start = time.perf_counter()
        code = run_job(job, argv, run.log, self.env())
        eval_wall = time.perf_counter() - start
        if code != 0:
            return f"evaluation exited with {code}; see {run.log}"
        result = json.loads(report.read_text())
        row = self._row(run, checkpoint, timing["train_wall_s"], eval_wall, result)
        self._append(row | self.environment(eval_device(run)))
        return ""

    def _row(self, run: Run, checkpoint: Path, train_wall: float, eval_wall: float, result: dict) -> dict:
        row: dict[str, Any] = {"arm": run.arm, "seed": run.seed, "steps": int(checkpoint.parent.name.split("_")[1]),
                               "train_wall_s": f"{train_wall:.0f}", "eval_wall_s": f"{eval_wall:.0f}"}
        by_name = {v["name"]: v for v in result["verification"]}
        for b in self.spec.bins:
            v = by_name[Path(b).stem]
            tar = v["tar_at_far"].get(f"{self.spec.far:g}")
            row |= {f"{Path(b).stem}_acc": f"{v['accuracy']:.6f}", f"{Path(b).stem}_acc_std": f"{v['std']:.6f}",
                    f"{Path(b).stem}_tar": "" if tar is None else f"{tar:.6f}"}
        return row

    def _append(self, row: dict) -> None:
        with self._lock:  # lanes finish concurrently: read-modify-replace under one lock
            rows = read_results(self.results) + [row]
            rows.sort(key=lambda r: (int(r["seed"]), list(self.spec.arms).index(r["arm"])
                                     if r["arm"] in self.spec.arms else len(self.spec.arms)))
            _write_csv(self.results, columns(self.spec), rows)

    def _write_spec(self) -> None:
        """The spec as run, beside the results: a later change to the committed spec does not rewrite history."""
        spec = {"preset": self.spec.preset, "overrides": self.spec.overrides, "arms": self.spec.arms,
                "seeds": self.spec.seeds, "eval": {"bins": self.spec.bins, "flip": self.spec.flip,
                                                   "far": self.spec.far}, "lanes": self.spec.lanes}
        path = self.out / "study.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            changed = [k for k in ("preset", "overrides", "eval") if saved.get(k) != spec[k]]
            changed += [f"arm {a}" for a in spec["arms"] if a in saved.get("arms", {})
                        and saved["arms"][a] != spec["arms"][a]]
            if changed:
                raise ValueError(f"{path} was run with other settings ({', '.join(changed)}): the results would mix "
                                 "protocols; use another `out` folder (adding arms or seeds is fine)")
            spec["arms"] = {**saved.get("arms", {}), **spec["arms"]}
            spec["seeds"] = sorted(set(saved.get("seeds", [])) | set(spec["seeds"]))
        atomic_write_text(path, json.dumps(spec, indent=2))


def _last_json(log: Path) -> dict:
    """The JSON object ``marginface eval --json`` printed last into ``log`` (it ends the file): the result of a
    study log written before the worker wrote it as ``<run>.eval.json`` (the evaluation job still prints it)."""
    text = log.read_text()
    start = text.rfind("\n{\n")
    if start < 0:
        raise ValueError(f"no JSON result in {log}")
    return json.JSONDecoder().raw_decode(text, start + 1)[0]  # whatever follows it (a warning at exit) is ignored


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(header), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def environments(rows: Sequence[dict[str, str]]) -> list[tuple[str, int]]:
    """The distinct environments of ``rows`` as one line each, with how many rows have it, most rows first; rows
    written before the environment was recorded count as 'not recorded'."""
    counts: dict[str, int] = {}
    for row in rows:
        if not any(row.get(f) for f in environment.FIELDS):
            line = "not recorded"
        else:
            dirty = {"yes": " + uncommitted changes", "no": ""}.get(row.get("marginface_dirty", ""), "")
            line = (f"torch {row.get('torch_version')}, numpy {row.get('numpy_version')}, python "
                    f"{row.get('python_version')}, marginface {row.get('marginface_commit', '')[:12]}{dirty}, "
                    f"{row.get('device')}, {row.get('torch_threads')} thread(s)")
        counts[line] = counts.get(line, 0) + 1
    return sorted(counts.items(), key=lambda item: -item[1])


@dataclass(frozen=True)
class ArmSummary:
    """One arm's figure on one set over its seeds: mean and sample std (ddof 1; 0 for a single seed)."""

    arm: str
    metric: str
    values: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


def summarise(rows: Sequence[dict[str, str]], metric: str) -> list[ArmSummary]:
    """Per arm (in order of first appearance), the seeds' values of ``metric`` (a results.csv column)."""
    values: dict[str, list[float]] = {}
    for row in rows:
        if row.get(metric, "") != "":
            values.setdefault(row["arm"], []).append(float(row[metric]))
    return [ArmSummary(arm, metric, v) for arm, v in values.items()]


def summary_table(rows: Sequence[dict[str, str]], sets: Sequence[str]) -> str:
    """Markdown: per arm, accuracy and TAR (%) as mean ± std over seeds (n seeds) for each set, and the mean
    training time (minutes of wall clock, as the runs had their lanes' threads)."""
    header = ["arm", "seeds"] + [f"{s} {k}" for s in sets for k in ("acc %", "TAR %")] + ["train min"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        cells = [arm, str(len(mine))]
        for s in sets:
            for metric in (f"{s}_acc", f"{s}_tar"):
                found = summarise(mine, metric)
                cells.append(f"{100 * found[0].mean:.2f} ± {100 * found[0].std:.2f}" if found else "n/a")
        train = summarise(mine, "train_wall_s")
        cells.append(f"{train[0].mean / 60:.1f}" if train else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Comparison:
    """Arm ``a`` against arm ``b`` on one metric: the study's tie rule, and Welch's t-test and a bootstrap interval
    over the seeds (``study_stats``; uncorrected here: ``marginface study --compare`` corrects a call's p-values
    together by Holm's method)."""

    a: ArmSummary
    b: ArmSummary

    @property
    def difference(self) -> float:
        return self.a.mean - self.b.mean

    @property
    def spread(self) -> float:
        """The larger of the two arms' seed std: a difference not larger than this is a tie."""
        return max(self.a.std, self.b.std)

    @property
    def verdict(self) -> str:
        if min(len(self.a.values), len(self.b.values)) < 2:
            return "cannot tell (one seed: no spread)"
        if abs(self.difference) <= self.spread:
            return "tie"
        return f"{self.a.arm} ahead" if self.difference > 0 else f"{self.b.arm} ahead"

    @property
    def welch(self) -> study_stats.Welch:
        """Welch's t-test of the difference of means over the two arms' seeds (two-sided p)."""
        return study_stats.welch(self.a.values, self.b.values)

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Percentile bootstrap interval of the difference of means (fixed generator seed: reproducible)."""
        return study_stats.bootstrap_interval(self.a.values, self.b.values, level)


def compare(rows: Sequence[dict[str, str]], a: str, b: str, metric: str) -> Comparison:
    """Compare two arms on a results.csv column (e.g. ``lfw_acc``): means, difference, spread, verdict."""
    found = {s.arm: s for s in summarise(rows, metric) if s.arm in (a, b)}
    missing = [arm for arm in (a, b) if arm not in found]
    if missing:
        raise ValueError(f"no {metric} results for arm(s) {missing}")
    return Comparison(found[a], found[b])


def arms_figure(rows: Sequence[dict[str, str]], arms: Sequence[tuple[str, str]], sets: Sequence[str],
                out: str | Path, xlabel: str = "arm") -> list[Path]:
    """Accuracy (mean ± sample std over seeds, and every seed as a dot) of ``arms`` — (arm, label) pairs, drawn in
    this order — on each set: one panel per set, PNG ``out`` and the numbers as CSV beside it. Labels that all
    parse as numbers are placed on a numeric axis (a margin sweep); otherwise evenly."""
    from marginface.analysis import draw

    missing = [arm for arm, _ in arms if not any(r["arm"] == arm for r in rows)]
    if missing:
        raise ValueError(f"no results for arm(s) {missing}; the study has {sorted({r['arm'] for r in rows})}")
    try:
        xs, numeric = [float(label) for _, label in arms], True
    except ValueError:  # categories: evenly placed, not joined by a line (there is nothing between two arms)
        xs, numeric = [float(i) for i in range(len(arms))], False
    table, csv_rows = {}, []
    for s in sets:
        for arm, label in arms:
            found = summarise([r for r in rows if r["arm"] == arm], f"{s}_acc")
            if found:
                table[(s, arm)] = found[0]
                csv_rows.append([s, arm, label, len(found[0].values), found[0].mean, found[0].std])
    plt = draw.pyplot()
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 3.6 if numeric else 4.6), squeeze=False)
    for ax, s in zip(axes[0], sets):
        points = [(x, table[(s, arm)]) for (arm, _), x in zip(arms, xs) if (s, arm) in table]
        ax.errorbar([x for x, _ in points], [100 * a.mean for _, a in points], yerr=[100 * a.std for _, a in points],
                    marker="o", capsize=4, color="C0", label="mean ± std over seeds",
                    linestyle="-" if numeric else "none")
        for x, a in points:
            ax.plot([x] * len(a.values), [100 * v for v in a.values], ".", color="0.5", markersize=4)
        ax.set_title(s)
        ax.set_xlabel(xlabel)
        if numeric:
            ax.set_xticks(xs, [label for _, label in arms])
        else:
            ax.set_xticks(xs, [label for _, label in arms], rotation=60, ha="right", fontsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("verification accuracy (%)")
    axes[0][0].legend(loc="best", fontsize=8)
    fig.tight_layout()
    return [draw.write_csv(Path(out).with_suffix(".csv"), ["set", "arm", "label", "seeds", "acc_mean", "acc_std"],
                           csv_rows), draw.save_figure(fig, out)]
