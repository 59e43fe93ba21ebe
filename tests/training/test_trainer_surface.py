"""The trainer's public surface for the app layer: callbacks, the one evaluate(), snapshot()/restore(), run_steps(),
and a dataset given to the constructor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from marginface.training.config import load_config
from marginface.training.trainer import Callback, Trainer, read_log

TINY = ["model.backbone=mobilefacenet", "model.embedding_size=32", "data.synthetic_identities=4",
        "data.synthetic_images_per_identity=2", "batch_size=4", "log_every=1", "device=cpu", "deterministic=true",
        "optim.lr=0.01", "optim.warmup_steps=0", "validation.synthetic_pairs=10", "validation.synthetic_identities=4",
        "validation.batch_size=10", "checkpoint_every=100"]


@pytest.fixture(autouse=True)
def one_thread():
    """A tiny network on shared cores: one thread is several times faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(tmp_path: Path, *extra: str, **kwargs) -> Trainer:
    return Trainer(load_config(None, [*TINY, f"output_dir={tmp_path}", *extra]), **kwargs).setup()


class Recorder(Callback):
    """Every event with its step and values; writes one row of its own into the run's log per step."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def before_fit(self, trainer: Trainer) -> None:
        self.events.append(("before_fit", trainer.step))

    def after_step(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        self.events.append(("after_step", step, metrics["loss"], metrics["lr"]))
        trainer.log(step, {"callback_step": float(step)})

    def after_validation(self, trainer: Trainer, step: int, results) -> None:
        self.events.append(("after_validation", step, results, trainer.verification))


@pytest.mark.slow
def test_callbacks_see_every_step_and_validation_and_write_into_the_log(tmp_path: Path) -> None:
    recorder = Recorder()
    trainer = tiny(tmp_path, "steps=3", "validation.every=2", callbacks=[recorder])
    results = trainer.fit()
    steps = [e for e in recorder.events if e[0] == "after_step"]
    validations = [e for e in recorder.events if e[0] == "after_validation"]
    assert recorder.events[0] == ("before_fit", 0)
    assert [e[1] for e in steps] == [1, 2, 3] and [e[1] for e in validations] == [2, 3]
    logged = read_log(tmp_path)
    # the callback's loss and lr are the ones the trainer logs (8 significant digits in log.csv)
    assert [(s, pytest.approx(v, rel=1e-7)) for s, v in logged["loss"]] == [(e[1], e[2]) for e in steps]
    assert [v for _, v in logged["lr"]] == pytest.approx([e[3] for e in steps], rel=1e-7)
    assert logged["callback_step"] == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert validations[-1][2] == results["final"] == {k: float(r.accuracy.mean) for k, r in validations[-1][3].items()}
    assert logged["val_synthetic_heldout"] == [(2, pytest.approx(validations[0][2]["synthetic_heldout"], rel=1e-7)),
                                               (3, pytest.approx(validations[1][2]["synthetic_heldout"], rel=1e-7))]


def test_log_outside_fit_is_refused(tmp_path: Path) -> None:
    trainer = tiny(tmp_path, "steps=1")
    with pytest.raises(RuntimeError, match="call it from a callback"):
        trainer.log(0, {"x": 1.0})


@pytest.mark.slow
def test_restore_returns_to_the_snapshot_and_training_from_it_repeats_exactly(tmp_path: Path) -> None:
    trainer = tiny(tmp_path, "steps=6")
    trainer.run_steps(1)
    start = trainer.snapshot()
    first_loss = trainer.run_steps(2)
    first = {k: v.clone() for k, v in trainer.backbone.state_dict().items()}
    centres = trainer.loss.weight.detach().clone()
    assert trainer.step == 3 and start.step == 1
    trainer.restore(start)
    assert trainer.step == 1
    assert all(torch.equal(v, start.backbone[k]) for k, v in trainer.backbone.state_dict().items())
    assert trainer.run_steps(2) == first_loss  # same batches (a function of the step), same momentum
    assert all(torch.equal(v, first[k]) for k, v in trainer.backbone.state_dict().items())
    assert torch.equal(trainer.loss.weight.detach(), centres)
    trainer.restore(start)  # the snapshot was not changed by the training after the first restore
    assert trainer.run_steps(2, start=1) == first_loss


@pytest.mark.slow
def test_evaluate_is_the_normalised_embedding_verification_and_leaves_training_mode(tmp_path: Path) -> None:
    trainer = tiny(tmp_path, "steps=1")
    name, images, issame = trainer.validation_sets[0]
    plain = trainer.evaluate(flip=False)
    assert trainer.model.training  # back to training mode
    trainer.backbone.eval()
    with torch.no_grad():  # the reference: one forward of every image, L2-normalised in float64
        naive = F.normalize(trainer.backbone(images).double(), dim=1).numpy()
    trainer.backbone.train()
    np.testing.assert_allclose(plain.embeddings[name], naive, atol=1e-5)
    scores = np.sum(naive[0::2] * naive[1::2], axis=1)
    assert plain.results[name].auc == pytest.approx(_auc(scores, issame), abs=1e-9)
    # the default is flip TTA on the run's validation sets; validate() keeps what evaluate() returns
    assert trainer.validate() == trainer.evaluate().accuracies == trainer.evaluate([(name, images, issame)]).accuracies
    assert trainer.evaluate().mean_accuracy == trainer.validate()[name]


def _auc(scores: np.ndarray, issame: np.ndarray) -> float:
    """P(genuine score > impostor score) + 0.5 P(tie), by counting every (genuine, impostor) pair."""
    genuine, impostor = scores[issame], scores[~issame]
    wins = sum(float(g > i) + 0.5 * float(g == i) for g in genuine for i in impostor)
    return wins / (len(genuine) * len(impostor))


def test_a_dataset_given_to_the_trainer_is_the_one_it_trains_on(tmp_path: Path) -> None:
    from marginface.data.synthetic import SyntheticFaces

    class Counted(SyntheticFaces):
        reads = 0

        def __getitem__(self, index: int):
            Counted.reads += 1
            return super().__getitem__(index)

    dataset = Counted(4, 2, 0)
    trainer = tiny(tmp_path, "steps=1", dataset=dataset)
    assert trainer.dataset is dataset
    trainer.run_steps(1)
    assert Counted.reads == 4  # one batch of 4 images, read from the given dataset
