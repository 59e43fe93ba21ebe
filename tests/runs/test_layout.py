"""RunDir: the run folder's names (pinned: old runs must keep resuming), its complete steps, the newest whole step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from marginface.errors import UserError
from marginface.runs import RunDir, write_checkpoint
from marginface.runs.layout import model_file, run_of


def _save(run: Path, step: int, shards: int = 1, shard: int = 0) -> Path:
    """A checkpoint folder of shard ``shard`` of a step saved as ``shards`` shards (4 classes, 2-d centres)."""
    rows = 4 // shards
    state = {"step": step, "classes": {"num_classes": 4, "shards": shards, "shard": shard,
                                       "start": shard * rows, "end": (shard + 1) * rows, "optimizer_ids": {}}}
    folder = run if shard == 0 else run / f"rank{shard}"
    return write_checkpoint(folder, step, {"loss.weight": torch.full((rows, 2), float(step))}, {}, state)


def test_the_names_of_a_run_folder_are_those_older_runs_were_written_with(tmp_path):
    run = RunDir(tmp_path)
    assert run.config == tmp_path / "config.json" and run.history == tmp_path / "history.jsonl"
    assert run.log == tmp_path / "log.csv" and run.tensorboard == tmp_path / "tensorboard"
    assert run.best == tmp_path / "best.safetensors" and run.best_scores == tmp_path / "best.json"
    assert run.step_dir(42) == tmp_path / "checkpoints" / "step_00000042"
    assert run.step_dir(7, shard=2) == tmp_path / "rank2" / "checkpoints" / "step_00000007"
    assert run.weights(3) == tmp_path / "checkpoints" / "step_00000003" / "model.safetensors"
    assert run.search_state == tmp_path / "search_state.safetensors" and run.retrain == tmp_path / "retrain.json"
    assert run.retrain_run("softmax", 1) == tmp_path / "retrain" / "softmax_seed1"


def test_steps_are_the_complete_step_folders_in_order(tmp_path):
    for step in (12, 2, 4):
        _save(tmp_path, step)
    root = tmp_path / "checkpoints"
    (root / "step_00000004.tmp").mkdir()  # a save killed before its rename
    torn = root / "step_00000099"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"")  # two files short of a checkpoint
    (root / "step_7").mkdir()  # not a step folder name
    assert RunDir(tmp_path).steps() == [2, 4, 12]
    assert list(RunDir(tmp_path).step_folders()) == [2, 4, 12]
    assert RunDir(tmp_path / "absent").steps() == [] and RunDir(tmp_path / "absent").newest() is None


def test_the_newest_step_is_the_newest_with_every_shard(tmp_path):
    _save(tmp_path, 2, shards=2, shard=0)
    _save(tmp_path, 2, shards=2, shard=1)
    _save(tmp_path, 4, shards=2, shard=0)  # rank 1 killed before its save of step 4
    run = RunDir(tmp_path)
    assert run.steps() == [2, 4]
    assert run.newest().step == 2 and run.newest_folder() == run.step_dir(2)
    assert [str(f) for f in run.newest().folders] == [str(run.step_dir(2)), str(run.step_dir(2, shard=1))]
    with pytest.raises(UserError, match="saved as 2 shards but these are missing"):
        run.saved_step(4)
    _save(tmp_path, 4, shards=2, shard=1)
    assert run.newest().step == 4


def test_no_latest_pointer_for_new_runs_and_an_old_runs_pointer_is_kept_current(tmp_path):
    new, old = tmp_path / "new", tmp_path / "old"
    _save(new, 2)
    assert not (new / "checkpoints" / "latest").exists()
    _save(old, 2)
    (old / "checkpoints" / "latest").write_text("step_00000002")  # as runs written before marginface.runs
    _save(old, 4)
    assert (old / "checkpoints" / "latest").read_text() == "step_00000004"
    (old / "checkpoints" / "latest").write_text("step_00000002")  # a stale pointer is never believed
    assert RunDir(old).newest().step == 4


def test_a_checkpoint_is_the_three_files_older_versions_wrote(tmp_path):
    """Byte for byte: model.safetensors as safetensors writes the tensors and card, state.json as json.dumps."""
    model, training = {"backbone.w": torch.arange(6.0).view(2, 3)}, {"rng.torch": torch.arange(3, dtype=torch.uint8)}
    state, card = {"step": 5, "best": {}}, {"marginface.card": "{}"}
    folder = write_checkpoint(tmp_path, 5, model, training, state, card)
    save_file(model, str(tmp_path / "m.safetensors"), metadata=card)
    save_file(training, str(tmp_path / "o.safetensors"))
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "optimizer.safetensors", "state.json"]
    assert (folder / "model.safetensors").read_bytes() == (tmp_path / "m.safetensors").read_bytes()
    assert (folder / "optimizer.safetensors").read_bytes() == (tmp_path / "o.safetensors").read_bytes()
    assert (folder / "state.json").read_text() == json.dumps(state)


def test_final_weights_only_once_the_configured_last_step_is_saved(tmp_path):
    run = RunDir(tmp_path)
    assert run.final_weights() is None  # no config.json: not a run yet
    run.config.parent.mkdir(exist_ok=True)
    run.config.write_text(json.dumps({"steps": 4}))
    _save(tmp_path, 2)
    assert run.final_weights() is None
    _save(tmp_path, 4)
    assert run.final_weights() == run.weights(4)


def test_model_paths_resolve_to_their_file_and_their_run(tmp_path):
    folder = _save(tmp_path, 3)
    assert model_file(folder) == folder / "model.safetensors"
    assert model_file(tmp_path / "best.safetensors") == tmp_path / "best.safetensors"
    assert model_file(tmp_path) == tmp_path  # a run folder is not a checkpoint folder
    assert run_of(folder / "model.safetensors").path == tmp_path
    assert run_of(_save(tmp_path, 3, shards=2, shard=1) / "model.safetensors").path == tmp_path
    assert run_of(tmp_path / "best.safetensors").path == tmp_path


def test_a_search_begun_before_its_log_had_a_name_of_its_own_keeps_its_log_csv(tmp_path):
    run = RunDir(tmp_path)
    assert run.search_log == tmp_path / "search_log.csv"
    run.search_state.write_bytes(b"")
    assert run.search_log == tmp_path / "search_log.csv"  # a search's first round: its own name
    run.log.write_text("round,row,reward\n")
    assert run.search_log == tmp_path / "log.csv"


def test_read_config_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json is missing: is .* a marginface run folder"):
        RunDir(tmp_path).read_config()
