"""Resharding: a step saved with its class centres split over R processes, read for R' (training/reshard.py), and
``marginface checkpoint merge|split``; a run continued 1 -> 2 -> 3 -> 1 processes equals one process step by step."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.training.test_trainer import TINY, free_port

from marginface.cli import main
from marginface.errors import UserError
from marginface.heads import shard_range
from marginface.training import checkpoint as ckpt
from marginface.training.config import load_config
from marginface.training.placement import shard_folder
from marginface.training.reshard import SavedStep, rewrite, step_folder
from marginface.training.trainer import Trainer, read_log

C, D = 10, 4


def _fake_run(run_dir: Path, shards: int, step: int = 7) -> dict[str, torch.Tensor]:
    """A step saved as ``shards`` shards of a C-class centre matrix, with momentum, SparseRowSGD's row_started,
    a shared scalar, a replicated backbone tensor and per-rank RNG / sampler state. Returns the full tensors."""
    gen = torch.Generator().manual_seed(0)
    full = {"weight": torch.randn(C, D, generator=gen), "momentum": torch.randn(C, D, generator=gen),
            "started": torch.rand(C, generator=gen) > 0.5}
    for k in range(shards):
        start, end = shard_range(C, shards, k)
        model = {"backbone.w": torch.arange(6.0), "loss.weight": full["weight"][start:end],
                 "loss.t": torch.tensor(0.25)}
        training = {"state.1.momentum_buffer": full["momentum"][start:end],
                    "state.1.row_started": full["started"][start:end],
                    "state.0.momentum_buffer": torch.full((6,), 3.0),  # the backbone's: replicated
                    "rng.torch": torch.full((8,), k, dtype=torch.uint8),
                    "head._extra_state": torch.full((4,), 10 + k, dtype=torch.uint8)}
        state = {"step": step, "optimizer": {"param_groups": [], "state": {}}, "rng": {"rank": k}, "best": {},
                 "classes": {"num_classes": C, "shards": shards, "shard": k, "start": start, "end": end,
                             "optimizer_ids": {"loss.weight": 1}}}
        ckpt.write_checkpoint(shard_folder(run_dir, k), step, model, training, state, {"card": "x"})
    return full


@pytest.mark.parametrize(("saved", "wanted"), [(1, 3), (3, 1), (2, 3), (3, 2), (4, 4)])
def test_any_shard_of_any_layout_is_cut_from_the_saved_shards(tmp_path: Path, saved: int, wanted: int) -> None:
    full = _fake_run(tmp_path, saved)
    step = SavedStep.newest(tmp_path)
    assert (step.step, step.shards, step.num_classes) == (7, saved, C)
    for k in range(wanted):
        start, end = shard_range(C, wanted, k)
        files = step.files_for(wanted, k)
        assert torch.equal(files.model["loss.weight"], full["weight"][start:end])
        assert torch.equal(files.training["state.1.momentum_buffer"], full["momentum"][start:end])
        assert torch.equal(files.training["state.1.row_started"], full["started"][start:end])
        assert torch.equal(files.model["backbone.w"], torch.arange(6.0)) and float(files.model["loss.t"]) == 0.25
        assert torch.equal(files.training["state.0.momentum_buffer"], torch.full((6,), 3.0))
        own = k if k < saved else 0  # per-process state: the same rank's, else rank 0's
        assert int(files.training["rng.torch"][0]) == own and files.state["rng"] == {"rank": own}
        assert int(files.training["head._extra_state"][0]) == 10 + own
        assert files.state["classes"] == {"num_classes": C, "shards": wanted, "shard": k, "start": start,
                                          "end": end, "optimizer_ids": {"loss.weight": 1}}
        assert files.metadata == {"card": "x"}


def test_merge_then_split_round_trips_and_refuses_what_it_cannot_do(tmp_path: Path, capsys) -> None:
    full = _fake_run(tmp_path / "run", 3)
    (tmp_path / "run" / "config.json").write_text("{}")
    assert main(["checkpoint", "merge", str(tmp_path / "run"), str(tmp_path / "merged"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["from_shards"], out["to_shards"], out["step"]) == (3, 1, 7)
    merged = load_file(str(step_folder(tmp_path / "merged", 0, 7) / "model.safetensors"))
    assert torch.equal(merged["loss.weight"], full["weight"])  # the full centre matrix in one file
    assert (tmp_path / "merged" / "config.json").is_file() and not (tmp_path / "merged" / "rank1").exists()
    assert main(["checkpoint", "split", str(tmp_path / "merged"), str(tmp_path / "split"), "--shards", "3"]) == 0
    for k in range(3):
        a = load_file(str(step_folder(tmp_path / "run", k, 7) / "optimizer.safetensors"))
        b = load_file(str(step_folder(tmp_path / "split", k, 7) / "optimizer.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a if key.startswith("state."))
    # nothing is overwritten; an incomplete step is named; a missing rank folder is named
    assert main(["checkpoint", "merge", str(tmp_path / "run"), str(tmp_path / "merged")]) == 2
    assert "exists" in capsys.readouterr().err
    (step_folder(tmp_path / "run", 2, 7) / "optimizer.safetensors").unlink()
    with pytest.raises(UserError, match="rank2"):
        SavedStep(tmp_path / "run", 7)
    assert SavedStep.newest(tmp_path / "run") is None  # the only step lacks a shard: nothing to resume
    with pytest.raises(UserError, match="cannot split 10 classes into 11"):
        rewrite(tmp_path / "merged", tmp_path / "eleven", 11)


def _worker(rank: int, world: int, port: int, run_dir: str, overrides: list[str]) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from marginface.training.distributed import shutdown

    Trainer(load_config(None, [*TINY, f"output_dir={run_dir}", *overrides]), allow_schedule_change=True).setup().fit()
    shutdown()


COMMON = ["data.synthetic_identities=12", "batch_size=12", "loss.name=cosface", "checkpoint_every=1",
          "loss.head=chunked"]


def _continue(run_dir: Path, processes: int, step: int) -> None:
    """One more step of the run, on ``processes`` processes (sharded centres when more than one)."""
    overrides = [*COMMON, f"steps={step}"]
    if processes == 1:
        Trainer(load_config(None, [*TINY, f"output_dir={run_dir}", *overrides]), allow_schedule_change=True
                ).setup().fit()
    else:
        torch.multiprocessing.spawn(_worker, args=(processes, free_port(), str(run_dir),
                                                   [*overrides, "loss.sharded=true"]), nprocs=processes)


@pytest.mark.slow
def test_a_run_continues_on_one_two_three_then_one_process_like_one_process(tmp_path: Path) -> None:
    """Steps 1..4 on 1, 2, 3, 1 processes (chunked head; sharded centres on 2 and 3): each step, resumed from the
    previous step's checkpoint re-cut for its processes, equals one process taking that step from the same state
    with the batch in R micro-batches (BatchNorm statistics per rank, as the existing sharded test) — centres,
    their momentum and the backbone, to the tolerances of that test (float32 sums in another order)."""
    torch.set_num_threads(1)
    run = tmp_path / "run"
    for step, processes in enumerate((1, 2, 3, 1), start=1):
        if step > 1:  # the reference: the previous step merged into one process, then one step of R micro-batches
            reference = tmp_path / f"reference_{step}"
            rewrite(run, reference, 1, step - 1)
            Trainer(load_config(None, [*TINY, f"output_dir={reference}", *COMMON, f"steps={step}",
                                       f"grad_accum_steps={processes}"]), allow_schedule_change=True).setup().fit()
        _continue(run, processes, step)
        saved = SavedStep(run, step)
        assert saved.shards == (processes if processes > 1 else 1)
        if step == 1:
            continue
        merged = tmp_path / f"merged_{step}"
        rewrite(run, merged, 1, step)
        got = {**load_file(str(step_folder(merged, 0, step) / "model.safetensors")),
               **load_file(str(step_folder(merged, 0, step) / "optimizer.safetensors"))}
        want = {**load_file(str(step_folder(reference, 0, step) / "model.safetensors")),
                **load_file(str(step_folder(reference, 0, step) / "optimizer.safetensors"))}
        # the merged centres are the shards' rows in order
        shards = [load_file(str(f / "model.safetensors"))["loss.weight"] for f in saved.folders]
        assert torch.equal(torch.cat(shards), got["loss.weight"]) and got["loss.weight"].shape[0] == 12
        running = ("running_mean", "running_var", "num_batches_tracked")  # per process under DDP
        compared = [k for k in want if (k.startswith(("backbone.", "loss.")) and not k.endswith(running))
                    or (k.startswith("state.") and want[k].is_floating_point())]
        assert len(compared) > 100
        for key in compared:  # relative to each tensor's largest entry, as the sharded trainer test
            scale = max(1.0, float(want[key].abs().max()))
            error = float((got[key] - want[key]).abs().max())
            assert error <= 1e-4 * scale, f"step {step} on {processes} processes, {key}: {error:.3g}"
        losses_run = dict(read_log(run)["loss"])
        assert losses_run[step] == pytest.approx(dict(read_log(reference)["loss"])[step], rel=1e-4)
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["facts"]["world_size"] for h in history] == [1, 2, 3, 1]
    assert [c["key"] for c in history[1]["changes"]] == ["loss.sharded", "steps", "world_size"]
