"""Triplet fine-tuning in the trainer: init_from a trained model, triplet / combined objectives, resume, DDP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.training.test_trainer import TINY, free_port, logged_steps, tiny_config

from marginface.training.config import ConfigError, load_config
from marginface.training.trainer import Trainer, read_log
from marginface.triplet import TripletLoss

PK = ["data.sampler=pk", "data.pk_images_per_identity=2"]
TRIPLET = [*PK, "loss.name=triplet", "loss.params={margin: 0.3, mining: batch_hard}"]


@pytest.fixture(scope="module")
def init_model(tmp_path_factory) -> Path:
    """A 1-step ArcFace run on 6 synthetic identities: the 'trained model' the fine-tuning starts from."""
    run = tmp_path_factory.mktemp("arcface")
    torch.set_num_threads(1)
    Trainer(tiny_config(run, "data.synthetic_identities=6", "batch_size=4", "steps=1", "checkpoint_every=1",
                        "loss.name=arcface")).setup().fit()
    return run / "checkpoints" / "step_00000001"


def test_triplet_run_starts_from_the_init_backbone_and_trains(tmp_path, init_model):
    config = tiny_config(tmp_path, *TRIPLET, "data.synthetic_identities=6", "batch_size=4", "steps=2",
                         "checkpoint_every=2", f"model.init_from={init_model}")
    trainer = Trainer(config).setup()
    start = load_file(str(init_model / "model.safetensors"))
    for key, value in trainer.backbone.state_dict().items():
        assert torch.equal(value, start[f"backbone.{key}"]), key
    assert trainer.model.head.margin_head is None and not list(trainer.model.head.parameters())
    trainer.fit()
    log = read_log(tmp_path)
    assert [s for s, _ in log["loss"]] == [1, 2] and all(v >= 0 for _, v in log["loss"])
    assert log["triplet_loss"] == log["loss"] and all(0 <= v <= 1 for _, v in log["triplet_active_fraction"])
    final = load_file(str(tmp_path / "checkpoints/step_00000002/model.safetensors"))
    assert not [k for k in final if k.startswith("loss.")]  # no class centres
    assert any(not torch.equal(final[k], start[k]) for k in final if k.endswith("weight"))
    from marginface.inference import load_model

    assert load_model(tmp_path / "checkpoints/step_00000002").card.loss["name"] == "triplet"


def test_combined_objective_is_margin_softmax_plus_lambda_triplet_in_a_step(tmp_path):
    """The trainer's first step returns arcface(e) + 0.5 * triplet(e) on its batch, recomputed by hand."""
    from marginface.training.finetune import loss_stats

    config = tiny_config(tmp_path, *PK, "loss.name=arcface", "loss.triplet_weight=0.5",
                         "loss.triplet_params={margin: 0.3, mining: batch_all}", "data.synthetic_identities=6",
                         "batch_size=4", "steps=1", "checkpoint_every=1")
    trainer = Trainer(config).setup()
    images, labels = next(iter(trainer.data_loader()))
    assert len(set(labels.tolist())) == 2  # P = 2 identities x K = 2
    with torch.no_grad():  # train mode: BatchNorm's batch statistics, as in the step
        emb = trainer.backbone(images)
        triplet = TripletLoss(0.3, mining="batch_all")(emb, labels)
        expected = trainer.loss(emb, labels) + 0.5 * triplet
    assert float(triplet) > 0
    got = trainer.train_step(images, labels)
    assert got == pytest.approx(float(expected), rel=1e-5)
    assert loss_stats(trainer.model.head)["triplet_loss"] == pytest.approx(float(triplet), rel=1e-5)
    assert trainer.loss.weight.shape == (6, 32)


def test_init_loss_continues_the_softmax_training_with_its_centres(tmp_path, init_model):
    config = tiny_config(tmp_path, "data.synthetic_identities=6", "batch_size=4", "steps=1", "loss.name=arcface",
                         f"model.init_from={init_model}", "model.init_loss=true")
    trainer = Trainer(config).setup()
    start = load_file(str(init_model / "model.safetensors"))
    assert torch.equal(trainer.loss.weight.detach(), start["loss.weight"])
    fresh = Trainer(tiny_config(tmp_path / "fresh", "data.synthetic_identities=6", "batch_size=4", "steps=1",
                                "loss.name=arcface", f"model.init_from={init_model}")).setup()
    assert not torch.equal(fresh.loss.weight.detach(), start["loss.weight"])  # backbone only by default
    # init_from draws no random numbers: the fresh centres are those of a run without init_from
    plain = Trainer(tiny_config(tmp_path / "plain", "data.synthetic_identities=6", "batch_size=4", "steps=1",
                                "loss.name=arcface")).setup()
    assert torch.equal(fresh.loss.weight.detach(), plain.loss.weight.detach())


@pytest.mark.parametrize(("overrides", "error", "match"), [
    (["model.embedding_size=16"], ConfigError, r"embedding_size 32 \(config: model.embedding_size=16\)"),
    (["model.backbone=iresnet18"], ConfigError, "backbone 'mobilefacenet'"),
    (["model.output=B"], ConfigError, "output 'E'"),
    (["model.init_loss=true", "loss.name=cosface"], ConfigError, "trained with loss 'arcface'"),
    (["model.init_loss=true", "data.synthetic_identities=8", "batch_size=8"], ConfigError, "same classes"),
])
def test_init_from_a_model_that_does_not_fit_is_refused_naming_the_field(tmp_path, init_model, overrides, error,
                                                                         match):
    config = tiny_config(tmp_path, "data.synthetic_identities=6", "batch_size=4", "steps=1",
                         f"model.init_from={init_model}", *overrides)
    with pytest.raises(error, match=match):
        Trainer(config).setup()


def test_init_from_a_missing_file_names_the_field(tmp_path):
    config = tiny_config(tmp_path, "data.synthetic_identities=6", "batch_size=4", "steps=1",
                         f"model.init_from={tmp_path / 'nope.safetensors'}")
    with pytest.raises(FileNotFoundError, match="model.init_from"):
        Trainer(config).setup()


@pytest.mark.parametrize(("overrides", "match"), [
    (["loss.name=triplet"], "data.sampler"),
    ([*TRIPLET, "grad_accum_steps=2", "batch_size=8"], "grad_accum_steps"),
    ([*PK, "loss.name=triplet", "loss.params={mining: hardest}"], "loss.params: triplet mining"),
    ([*PK, "loss.name=arcface", "loss.triplet_weight=1", "loss.triplet_params={scale: 2}"], "loss.triplet_params"),
    ([*TRIPLET, "loss.triplet_weight=1"], "loss.triplet_weight"),
    ([*PK, "batch_size=5"], "batch_size: must be P x K"),
    (["model.init_loss=true"], "model.init_loss: needs model.init_from"),
])
def test_triplet_settings_that_cannot_work_are_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def run_cli(run_dir: Path, init: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "marginface.cli", "train", *TINY, *TRIPLET, f"output_dir={run_dir}",
           "data.synthetic_identities=6", "batch_size=4", "steps=6", "checkpoint_every=2", f"model.init_from={init}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


@pytest.mark.slow
def test_sigkill_then_resume_of_a_triplet_finetune_follows_the_uninterrupted_run(tmp_path, init_model):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = run_cli(straight, init_model)
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-2000:]
    victim = run_cli(killed, init_model)
    deadline = time.time() + 600
    while logged_steps(killed) < 3 and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)  # after step 3, between the checkpoints of steps 2 and 4
    victim.wait()
    assert logged_steps(killed) < 6, "the run finished before it could be killed"
    resumed = run_cli(killed, init_model)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-2000:]
    for key in ("loss", "triplet_active_fraction"):
        assert read_log(killed)[key] == read_log(straight)[key]
    final = "checkpoints/step_00000006/model.safetensors"
    a, b = load_file(str(straight / final)), load_file(str(killed / final))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _ddp_worker(rank: int, world: int, port: int, runs: list[tuple[str, list[str]]]) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from marginface.training.distributed import shutdown

    for run_dir, overrides in runs:
        Trainer(load_config(None, [*TINY, f"output_dir={run_dir}", *overrides])).setup().fit()
    shutdown()


DDP_RUNS = {
    "triplet": [*TRIPLET, "loss.params={margin: 0.3, mining: batch_all}"],
    "combined": [*PK, "loss.name=arcface", "loss.triplet_weight=0.5", "loss.triplet_params={mining: batch_all}"],
}


@pytest.mark.slow
def test_two_processes_mine_the_global_batch_like_one_process(tmp_path):
    """2 ranks x 2 identities (gloo DDP) == 1 process that embeds the same two halves and mines them together,
    for the triplet loss alone and for ArcFace + 0.5 x triplet (centres averaged by DDP, triplet gradient x R)."""
    common = ["data.synthetic_identities=8", "batch_size=8", "steps=1", "checkpoint_every=1"]
    runs = [(str(tmp_path / f"ddp_{name}"), [*common, *extra]) for name, extra in DDP_RUNS.items()]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, free_port(), runs), nprocs=2)
    torch.set_num_threads(1)
    for name, extra in DDP_RUNS.items():
        single = Trainer(tiny_config(tmp_path / f"single_{name}", *common, *extra)).setup()
        images, labels = next(iter(single.data_loader()))  # world size 1: the whole global batch of 4 x 2
        for group in single.optimizer.param_groups:
            group["lr"] = single.config.optim.lr
        single.optimizer.zero_grad()
        emb = torch.cat([single.backbone(half) for half in images.chunk(2)])  # BatchNorm per half, as per rank
        loss = single.model.head(emb, labels)
        loss.backward()
        single.optimizer.step()
        ddp = load_file(str(tmp_path / f"ddp_{name}" / "checkpoints/step_00000001/model.safetensors"))
        assert read_log(tmp_path / f"ddp_{name}")["loss"][0][1] == pytest.approx(float(loss.detach()), rel=1e-5)
        running = ("running_mean", "running_var", "num_batches_tracked")  # per process under DDP
        params = {f"backbone.{k}": v for k, v in single.backbone.state_dict().items() if not k.endswith(running)}
        params.update({f"loss.{k}": v for k, v in single.loss.state_dict().items()})
        assert len(params) > 50 and ("loss.weight" in params) == (name == "combined")
        for key, value in params.items():
            # relative to the tensor's largest entry: float32 sums in another order differ by ~1e-6 of it
            error, scale = float((ddp[key] - value).abs().max()), max(1.0, float(value.abs().max()))
            assert error <= 1e-5 * scale, f"{name} {key}: {error:.3g} > 1e-5 x {scale:.3g}"


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard"])
def test_triplet_training_lowers_the_loss_on_a_fixed_batch(tmp_path, mining):
    """2 identities x 2 images, no flips: every P x K batch is the same 4 images; 5 steps must lower the loss."""
    config = tiny_config(tmp_path, *PK, "loss.name=triplet", f"loss.params={{margin: 0.5, mining: {mining}}}",
                         "data.synthetic_identities=2", "data.flip=false", "batch_size=4", "steps=5",
                         "checkpoint_every=100", "grad_clip=5.0")
    Trainer(config).setup().fit()
    values = [v for _, v in read_log(tmp_path)["loss"]]
    assert all(map(torch.isfinite, torch.tensor(values))), values
    assert values[-1] < values[0], f"{mining}: loss did not decrease: {values}"
