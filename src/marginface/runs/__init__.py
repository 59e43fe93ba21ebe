"""marginface.runs: the run on disk — every file of a run folder, written and read in one place.

- :class:`RunDir` (``layout.py``): the paths of a run folder (config, history, log, best model, checkpoints of
  every shard, search records) and what can be read back (its steps, the newest complete one, its config);
- ``checkpoints.py``: one checkpoint folder written atomically, and the ``backbone.*`` / ``loss.*`` keys of its
  ``model.safetensors``;
- :class:`SavedStep` (``steps.py``): a saved step of any number of shards, re-cut for any other, and
  :func:`rewrite` (``marginface checkpoint merge|split``);
- ``log.py``: ``log.csv`` (``step,key,value``), appended, truncated on resume, read;
- ``model.py``: a checkpoint's backbone and loss (and the run's training images) rebuilt from the run's config,
  for the analysis.

It imports the packages below it only (errors, paths, heads' shard rule, backbones, losses, data); training,
inference, analysis and the experiments read and write run folders through it.
"""

from typing import Any

from marginface.runs.layout import RunDir, shard_folder, step_name
from marginface.runs.log import read_log

#: names served from the submodules that import torch, loaded on first use (so that ``RunDir`` costs no torch:
#: the CLI and ``load_model``'s path handling use it)
_LAZY = {"load_model_tensors": "checkpoints", "model_tensors": "checkpoints", "write_checkpoint": "checkpoints",
         "SavedStep": "steps", "ShardFiles": "steps", "rewrite": "steps", "load_run_model": "model"}

__all__ = ["RunDir", "read_log", "shard_folder", "step_name", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'marginface.runs' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"marginface.runs.{_LAZY[name]}"), name)
