"""The run folder: every file name of a run (``marginface train`` / ``demo`` / ``search``) in one place.

A run folder ``<run>/`` holds

- ``config.json`` (the run's configuration, in steps) and ``history.jsonl`` (one line per start), written by
  ``training/run_checks.py``;
- ``checkpoints/step_<N>/`` (``N`` zero-padded to 8 digits) with ``model.safetensors``, ``optimizer.safetensors``
  and ``state.json`` (:mod:`marginface.runs.checkpoints`); a run whose class centres are sharded over R processes
  keeps shard k's folders in ``rank<k>/checkpoints/step_<N>/`` (:mod:`marginface.runs.steps`);
- ``log.csv`` (``step,key,value``; :mod:`marginface.runs.log`) and ``tensorboard/``;
- ``best.safetensors`` (the best validated weights with their model card) and ``best.json`` (its scores);
- figures and records written into it: ``loss_curve.png``, the analysis's ``theta_<source>.png/.csv`` and
  ``target_logit_training.png``, the demo's figures and report (``experiments/demo.py``), an AM-LFS
  search's ``search.json``, ``search_state.safetensors``, ``search_log.csv`` (older searches: ``log.csv``),
  ``search.png``, ``retrain.json`` and the comparison's runs ``retrain/<loss>_seed<k>/``.

Which checkpoint is the newest is found by listing ``checkpoints/`` (:meth:`RunDir.newest`), never from a pointer
file: with sharded centres rank 0 finishes its save before the other ranks do, so only the listing, checked for
every shard's three files, says which step is whole. (Runs written before this module kept a ``latest`` pointer
file; it is left alone and kept current for them, see :func:`marginface.runs.checkpoints.write_checkpoint`.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from marginface.runs.steps import SavedStep

CONFIG = "config.json"
HISTORY = "history.jsonl"
LOG = "log.csv"
TENSORBOARD = "tensorboard"
BEST = "best.safetensors"
BEST_SCORES = "best.json"
LOSS_CURVE = "loss_curve.png"
TARGET_LOGIT_TRAINING = "target_logit_training.png"
CHECKPOINTS = "checkpoints"
#: the pointer file runs written before :mod:`marginface.runs` kept in ``checkpoints/`` (never read)
LATEST = "latest"
#: the three files of a complete checkpoint folder
CHECKPOINT_FILES = ("model.safetensors", "optimizer.safetensors", "state.json")
MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = CHECKPOINT_FILES
SEARCH_SETTINGS = "search.json"
SEARCH_STATE = "search_state.safetensors"
SEARCH_LOG = "search_log.csv"
SEARCH_FIGURE = "search.png"
RETRAIN = "retrain.json"
STEP_FOLDER = re.compile(r"step_(\d{8})")


def step_name(step: int) -> str:
    """``step_00000042``: the folder name of step 42 (zero-padded so that names sort as steps)."""
    return f"step_{step:08d}"


def shard_folder(run_dir: str | Path, shard: int) -> Path:
    """The folder whose ``checkpoints/`` hold shard ``shard``'s files: the run folder for shard 0, else ``rank<s>``."""
    return Path(run_dir) if shard == 0 else Path(run_dir) / f"rank{shard}"


def is_complete(folder: Path) -> bool:
    """Whether a checkpoint folder holds its three files (a renamed-into-place folder always does)."""
    return all((folder / name).is_file() for name in CHECKPOINT_FILES)


def model_file(path: str | Path) -> Path:
    """``path/model.safetensors`` when ``path`` is a checkpoint folder (a folder holding one), else ``path``."""
    path = Path(path)
    return path / MODEL_FILE if path.is_dir() and (path / MODEL_FILE).is_file() else path


def run_of(model_path: str | Path) -> RunDir:
    """The run folder a model file of a run lies in: ``best.safetensors``'s folder, or the run above
    ``[rank<k>/]checkpoints/step_<N>/model.safetensors``; for any other file, its folder."""
    folder = Path(model_path).parent
    if STEP_FOLDER.fullmatch(folder.name) and folder.parent.name == CHECKPOINTS:
        folder = folder.parent.parent
        if re.fullmatch(r"rank\d+", folder.name):
            folder = folder.parent
    return RunDir(folder)


class RunDir:
    """A run folder: the paths of its files and what can be read back from them (see the module doc).

    ``RunDir(path)`` touches nothing on disk; every path is a plain attribute or method, every read says which
    file it wanted when it is missing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ files
    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def history(self) -> Path:
        return self.path / HISTORY

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def best_scores(self) -> Path:
        return self.path / BEST_SCORES

    @property
    def loss_curve(self) -> Path:
        return self.path / LOSS_CURVE

    @property
    def search_settings(self) -> Path:
        return self.path / SEARCH_SETTINGS

    @property
    def search_state(self) -> Path:
        return self.path / SEARCH_STATE

    @property
    def search_log(self) -> Path:
        """The AM-LFS search's log; a search written before it had a name of its own kept it as ``log.csv``."""
        own = self.path / SEARCH_LOG
        return self.log if not own.is_file() and self.search_state.is_file() and self.log.is_file() else own

    @property
    def search_figure(self) -> Path:
        return self.path / SEARCH_FIGURE

    @property
    def retrain(self) -> Path:
        """The from-scratch comparison's results (``marginface search --compare-seeds``)."""
        return self.path / RETRAIN

    def retrain_run(self, name: str, seed: int) -> Path:
        """The run folder of the from-scratch comparison's run of loss ``name`` with seed ``seed``."""
        return self.path / "retrain" / f"{name}_seed{seed}"

    def theta_figure(self, source: str) -> Path:
        """Where ``marginface plot theta`` draws a run's angle histograms by default (``theta_<source>.png``)."""
        return self.path / f"theta_{source}.png"

    @property
    def target_logit_training(self) -> Path:
        """Where ``marginface plot target-logit-training`` draws by default (beside the first run's log)."""
        return self.path / TARGET_LOGIT_TRAINING

    # ------------------------------------------------------------------ checkpoints
    def rank_dir(self, rank: int) -> Path:
        """Process ``rank``'s own folder: shard ``rank``'s checkpoints (sharded centres), or the start records of a
        search's copies on that rank; the run folder itself for rank 0."""
        return shard_folder(self.path, rank)

    def checkpoints(self, shard: int = 0) -> Path:
        """The folder of shard ``shard``'s checkpoint folders."""
        return self.rank_dir(shard) / CHECKPOINTS

    def step_dir(self, step: int, shard: int = 0) -> Path:
        """``checkpoints/step_<N>`` of shard ``shard`` (``rank<k>/checkpoints/step_<N>`` for k > 0)."""
        return self.checkpoints(shard) / step_name(step)

    def weights(self, step: int) -> Path:
        """The ``model.safetensors`` of step ``step`` (shard 0: the whole model of a replicated run)."""
        return self.step_dir(step) / MODEL_FILE

    def step_folders(self, shard: int = 0) -> dict[int, Path]:
        """{step: folder} of the complete checkpoint folders of one shard, ascending (``.tmp`` ones and folders
        missing a file left out)."""
        root = self.checkpoints(shard)
        found = {int(m.group(1)): p for p in root.iterdir() if (m := STEP_FOLDER.fullmatch(p.name)) and p.is_dir()
                 and is_complete(p)} if root.is_dir() else {}
        return dict(sorted(found.items()))

    def steps(self) -> list[int]:
        """The steps with a complete shard-0 checkpoint, ascending (a sharded step may still lack another rank's
        shard: :meth:`newest` checks them all)."""
        return list(self.step_folders())

    def saved_step(self, step: int) -> SavedStep:
        """Step ``step`` with all its shards (raises ``UserError`` naming what is missing)."""
        from marginface.runs.steps import SavedStep

        return SavedStep(self.path, step)

    def newest(self) -> SavedStep | None:
        """The newest step all of whose shards were written (a kill may land between two ranks' saves), or None."""
        from marginface.errors import UserError

        for step in reversed(self.steps()):
            try:
                return self.saved_step(step)
            except UserError:
                continue
        return None

    def newest_folder(self) -> Path | None:
        """Shard 0's folder of :meth:`newest` (what ``load_model`` takes), or None when nothing was saved."""
        saved = self.newest()
        return None if saved is None else saved.folders[0]

    def final_weights(self) -> Path | None:
        """The last step's ``model.safetensors`` when the run finished (``config.json``'s ``steps`` saved), else
        None."""
        if not self.config.is_file():
            return None
        folder = self.step_dir(int(self.read_config()["steps"]))
        return folder / MODEL_FILE if is_complete(folder) else None

    # ------------------------------------------------------------------ records
    def read_config(self) -> dict[str, Any]:
        """``config.json`` as saved (a nested mapping, in steps)."""
        if not self.config.is_file():
            raise FileNotFoundError(f"{self.config} is missing: is {self.path} a marginface run folder?")
        return json.loads(self.config.read_text())

    def read_log(self) -> dict[str, list[tuple[int, float]]]:
        """``log.csv`` as ``{key: [(step, value), ...]}`` (see :func:`marginface.runs.log.read_log`)."""
        from marginface.runs.log import read_log

        return read_log(self.log)

    def last_start(self) -> dict[str, Any]:
        """The newest line of ``history.jsonl`` (empty when there is none)."""
        if not self.history.is_file():
            return {}
        lines = [line for line in self.history.read_text().splitlines() if line.strip()]
        return json.loads(lines[-1]) if lines else {}
