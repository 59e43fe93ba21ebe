"""The trainer end to end on tiny CPU runs: every loss learns, resume after SIGKILL is exact, 2 processes equal 1."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from marginface import losses
from marginface.training.config import load_config
from marginface.training.trainer import Trainer, read_log

TINY = [
    "model.backbone=mobilefacenet", "model.embedding_size=32", "data.synthetic_images_per_identity=2",
    "log_every=1", "device=cpu", "deterministic=true", "optim.lr=0.05",
]


def tiny_config(tmp_path: Path, *extra: str):
    return load_config(None, [*TINY, f"output_dir={tmp_path}", *extra])


@pytest.mark.slow
@pytest.mark.parametrize("name", losses.available())
def test_every_loss_trains_without_nan_and_its_loss_decreases(tmp_path, name):
    """Overfit one fixed batch of 4 identities for a few steps: the loss must fall and stay finite."""
    config = tiny_config(tmp_path, f"loss.name={name}", "data.synthetic_identities=4",
                         "data.synthetic_images_per_identity=1", "data.flip=false", "batch_size=4", "steps=5",
                         "checkpoint_every=100", "grad_clip=5.0")
    Trainer(config).setup().fit()
    values = [v for _, v in read_log(tmp_path)["loss"]]
    assert all(map(torch.isfinite, torch.tensor(values))), values
    assert values[-1] < values[0], f"{name}: loss did not decrease: {values}"


def run_cli(tmp_path: Path, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "marginface.cli", "train", *TINY, f"output_dir={tmp_path}",
           "data.synthetic_identities=6", "batch_size=4", "steps=8", "checkpoint_every=2", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def logged_steps(run_dir: Path) -> int:
    try:
        return max((s for s, _ in read_log(run_dir)["loss"]), default=0)
    except (FileNotFoundError, KeyError):
        return 0


def raw_log_rows(run_dir: Path) -> list[tuple[str, str, str]]:
    """(step, key, value) rows of log.csv as written, timing values blanked."""
    with open(run_dir / "log.csv", newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    return [(step, key, "" if key == "img_per_s" else value) for step, key, value in rows]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_follows_the_uninterrupted_trajectory(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = run_cli(straight)
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-2000:]
    victim = run_cli(killed)
    deadline = time.time() + 600
    while logged_steps(killed) < 5 and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)  # mid-epoch, between checkpoints (every 2 steps), no clean-up
    victim.wait()
    assert logged_steps(killed) < 8, "the run finished before it could be killed"
    resumed = run_cli(killed)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-2000:]
    assert read_log(killed)["loss"] == read_log(straight)["loss"]
    # the raw log too: one row per (step, key), as in the straight run (no rows of the killed run past its
    # checkpoint); img_per_s values are timings and differ, the steps and keys may not
    assert raw_log_rows(killed) == raw_log_rows(straight)
    final = "checkpoints/step_00000008/model.safetensors"
    a, b = load_file(str(straight / final)), load_file(str(killed / final))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _ddp_worker(rank: int, world: int, port: int, run_dir: str, overrides: list[str]) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from marginface.training.distributed import shutdown

    trainer = Trainer(load_config(None, [*TINY, f"output_dir={run_dir}", *overrides])).setup()
    trainer.fit()
    shutdown()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_same_global_batch(tmp_path):
    """2 ranks x 4 images (DDP, gloo) == 1 process x 2 micro-batches of 4 (same images, same BN batches)."""
    common = ["data.synthetic_identities=8", "batch_size=8", "steps=3", "checkpoint_every=3", "loss.name=cosface"]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path / "ddp"), common), nprocs=2)
    single = tiny_config(tmp_path / "single", *common, "grad_accum_steps=2")
    torch.set_num_threads(1)
    Trainer(single).setup().fit()
    final = "checkpoints/step_00000003/model.safetensors"
    a, b = load_file(str(tmp_path / "ddp" / final)), load_file(str(tmp_path / "single" / final))
    # BatchNorm running statistics are per process under DDP (rank 0's are saved) while the single process
    # updates them once per micro-batch: they legitimately differ. Every trained parameter must agree.
    running = ("running_mean", "running_var", "num_batches_tracked")
    params = [k for k in a if not k.endswith(running)]
    assert len(params) > 50
    for key in params:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    ddp_losses = [v for _, v in read_log(tmp_path / "ddp")["loss"]]
    single_losses = [v for _, v in read_log(tmp_path / "single")["loss"]]
    assert ddp_losses == pytest.approx(single_losses, rel=1e-5)


def test_fused_centre_update_trains_like_the_unfused_chunked_head(tmp_path):
    """loss.fused_update=true: same checkpointed weights and losses as the chunked head + optimizer step."""
    common = ["data.synthetic_identities=6", "batch_size=4", "steps=3", "checkpoint_every=3", "loss.name=arcface",
              "loss.head=chunked", "loss.chunk_size=4"]
    for name, fused in (("plain", "false"), ("fused", "true")):
        trainer = Trainer(tiny_config(tmp_path / name, *common, f"loss.fused_update={fused}")).setup()
        trainer.fit()
        assert (trainer.loss.weight.grad is None) == (fused == "true")  # fused: no centre gradient, ever
    final = "checkpoints/step_00000003/model.safetensors"
    a, b = load_file(str(tmp_path / "fused" / final)), load_file(str(tmp_path / "plain" / final))
    assert a.keys() == b.keys() and any("weight" in k and v.shape[0] == 6 for k, v in a.items())
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    fused_losses = [v for _, v in read_log(tmp_path / "fused")["loss"]]
    assert fused_losses == pytest.approx([v for _, v in read_log(tmp_path / "plain")["loss"]], rel=1e-6)


def test_epochs_set_the_number_of_steps(tmp_path):
    """6 identities x 2 images = 12 images, batch 4: 3 steps per epoch, so epochs=2 runs 6 steps."""
    config = tiny_config(tmp_path, "data.synthetic_identities=6", "batch_size=4", "epochs=2", "steps=1000",
                         "checkpoint_every=100")
    trainer = Trainer(config).setup()
    assert trainer.config.steps == 6
    trainer.fit()
    assert logged_steps(tmp_path) == 6


def _sharded_worker(rank: int, world: int, port: int, runs: list[tuple[str, list[str]]]) -> None:
    """Run each (run_dir, overrides) in turn in one process group (a resume is a second run on the same dir)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from marginface.training.distributed import shutdown

    for run_dir, overrides in runs:
        # the resumed run extends steps 1 -> 3: a schedule change, allowed explicitly (training/run_checks.py)
        config = load_config(None, [*TINY, f"output_dir={run_dir}", *overrides])
        trainer = Trainer(config, allow_schedule_change=True).setup()
        trainer.fit()
        if trainer.config.loss.fused_update:  # the fused shards never hold a centre gradient
            assert trainer.loss.weight.grad is None
    shutdown()


@pytest.mark.slow
def test_sharded_centres_over_two_processes_equal_one_process_and_resume(tmp_path):
    """loss.sharded: 2 ranks x 4 images, 4 + 4 centres each == 1 process, all 8 centres, 2 micro-batches of 4.

    Partial FC at rate 1 per shard (sparse rows, SparseRowSGD); the single process starts from the same
    split-independent centres (``init_rows``). Compared after one step: this tiny setting (BatchNorm over 4
    images, CosFace s=64) is chaotic — a 1e-6 perturbation of the initial weights grows to 0.3-1.0 within two
    steps — and the sharded head sums the global batch in another order than two micro-batches (float32
    round-off). A sharded run with sampled negatives stopped at step 1 and resumed to 3 must equal the
    straight run: same operations, exact.
    """
    common = ["data.synthetic_identities=8", "batch_size=8", "loss.name=cosface", "checkpoint_every=1",
              "loss.head=partial_fc", "loss.sample_rate=1.0"]
    # The resume runs sample negatives (20 classes per shard, r = 0.5): the samplers' state must resume too.
    sampled = ["data.synthetic_identities=40", "batch_size=8", "loss.name=cosface", "checkpoint_every=1",
               "loss.head=partial_fc", "loss.sample_rate=0.5", "loss.sharded=true"]
    runs = [(str(tmp_path / "sharded"), [*common, "loss.sharded=true", "steps=2"]),
            (str(tmp_path / "fused"), [*common, "loss.sharded=true", "steps=2", "loss.head=chunked",
                                       "loss.fused_update=true"]),
            (str(tmp_path / "straight"), [*sampled, "steps=3"]),
            (str(tmp_path / "resumed"), [*sampled, "steps=1"]),
            (str(tmp_path / "resumed"), [*sampled, "steps=3"])]
    torch.multiprocessing.spawn(_sharded_worker, args=(2, free_port(), runs), nprocs=2)
    torch.set_num_threads(1)
    single = Trainer(tiny_config(tmp_path / "single", *common, "steps=2", "grad_accum_steps=2")).setup()
    single.loss.init_rows(0, single.config.seed)
    single.fit()

    first = "checkpoints/step_00000001/model.safetensors"
    one = load_file(str(tmp_path / "single" / first))
    ranks = [load_file(str(tmp_path / "sharded" / first)), load_file(str(tmp_path / "sharded" / "rank1" / first))]
    assert [r["loss.weight"].shape[0] for r in ranks] == [4, 4]
    torch.testing.assert_close(torch.cat([r["loss.weight"] for r in ranks]), one["loss.weight"], rtol=1e-4,
                               atol=1e-5)
    running = ("running_mean", "running_var", "num_batches_tracked")  # per process under DDP (see above)
    params = [k for k in one if k.startswith("backbone.") and not k.endswith(running)]
    assert len(params) > 50
    for key in params:  # relative to each tensor's largest entry: one step moves conv1 by O(1)
        scale = max(1.0, float(one[key].abs().max()))
        for rank, weights in enumerate(ranks):
            error = float((weights[key] - one[key]).abs().max())
            assert error <= 1e-4 * scale, f"rank {rank} {key}: {error:.3g} > 1e-4 x {scale:.3g}"
    sharded_losses = [v for _, v in read_log(tmp_path / "sharded")["loss"]][:2]
    assert sharded_losses == pytest.approx([v for _, v in read_log(tmp_path / "single")["loss"]], rel=1e-4)

    # The fused centre update on each shard (chunked head) trains exactly like the unfused shards.
    second = "checkpoints/step_00000002/model.safetensors"
    for rank_dir in ("", "rank1"):
        a = load_file(str(tmp_path / "sharded" / rank_dir / second))
        b = load_file(str(tmp_path / "fused" / rank_dir / second))
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=f"fused {rank_dir or 'rank0'} {key}")

    final = "checkpoints/step_00000003/model.safetensors"
    for rank_dir in ("", "rank1"):
        folder = tmp_path / "resumed" / rank_dir / "checkpoints/step_00000003"
        state = json.loads((folder / "state.json").read_text())
        assert state["classes"]["num_classes"] == 40 and state["classes"]["shards"] == 2
        assert load_file(str(folder / "optimizer.safetensors"))["head._extra_state"].numel() > 0  # the sampler
        a = load_file(str(tmp_path / "straight" / rank_dir / final))
        b = load_file(str(tmp_path / "resumed" / rank_dir / final))
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=f"{rank_dir or 'rank0'} {key}")


def test_written_models_carry_a_card(tmp_path):
    from marginface.inference import load_model
    from marginface.training import checkpoint as ckpt

    trainer = Trainer(tiny_config(tmp_path, "data.synthetic_identities=8", "batch_size=8", "steps=2",
                                  "checkpoint_every=2", "validation.synthetic_pairs=20",
                                  "validation.synthetic_identities=5", "validation.every=2")).setup()
    trainer.fit()
    best = load_model(tmp_path / "best.safetensors")
    assert best.card.source == "marginface-train" and best.card.validation["step"] == trainer.best["step"]
    assert best.card.training_data["identities"] == trainer.dataset.num_classes
    step = load_model(ckpt.latest_checkpoint(tmp_path))
    assert step.card.backbone == trainer.config.model.backbone
    assert len(step.card.weights_sha256) == 64


def test_resumed_logger_keeps_one_row_per_step_in_csv_and_tensorboard(tmp_path):
    """A logger resumed at step 3 drops what a killed run logged after step 3, in log.csv and TensorBoard."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from marginface.training.trainer import _RunLogger

    killed = _RunLogger(tmp_path, True)
    for step in range(1, 6):  # steps 4 and 5 happened after the step-3 checkpoint, then the kill
        killed.log(step, {"loss": 10.0 + step})
    killed.close()
    resumed = _RunLogger(tmp_path, True, resumed_at=3)
    for step in (4, 5, 6):
        resumed.log(step, {"loss": float(step)})
    resumed.close()
    expected = [(1, 11.0), (2, 12.0), (3, 13.0), (4, 4.0), (5, 5.0), (6, 6.0)]
    assert read_log(tmp_path)["loss"] == expected
    assert [row[:2] for row in raw_log_rows(tmp_path)] == [(str(s), "loss") for s, _ in expected]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == expected
