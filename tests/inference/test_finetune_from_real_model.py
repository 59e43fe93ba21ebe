"""Fine-tuning starts from insightface's MS1M MobileFaceNet (MXNet zoo files, or converted): at step 0 the run's
checkpoint computes what the original file computes on real aligned faces (issue 30)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from marginface.inference import load_model
from marginface.inference.model import convert_model
from marginface.training.config import load_config
from marginface.training.trainer import Trainer

#: the model section the fine-tuning presets use for this model (its card: mobilefacenet, D 128, option E)
MODEL = ["model.backbone=mobilefacenet", "model.embedding_size=128"]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def _step0(run: Path, init: Path | str) -> Path:
    """A steps=0 run from ``init`` on synthetic data (the data does not matter: nothing is trained)."""
    torch.set_num_threads(1)
    config = load_config(None, [*MODEL, f"model.init_from={init}", "steps=0", "batch_size=4", "device=cpu",
                                "data.synthetic_identities=4", "data.synthetic_images_per_identity=2",
                                "loss.name=arcface", f"output_dir={run}"])
    Trainer(config).setup().fit()
    return run / "checkpoints" / "step_00000000"


@pytest.mark.slow
def test_step0_of_a_finetune_from_the_mxnet_model_gives_the_original_embeddings(shared_models, real_aligned_faces,
                                                                                  tmp_path):
    y1 = shared_models / "insightface_mobilefacenet_y1" / "model"
    original = load_model(y1)  # (x - 127.5) / 128, normalisation inside the MXNet graph
    faces = real_aligned_faces
    expected = original.forward(faces)
    converted = tmp_path / "y1.safetensors"
    convert_model(y1, converted)
    for name, init in (("prefix", y1), ("converted", converted)):  # the MXNet files, `marginface convert`'s file
        step0 = load_model(_step0(tmp_path / f"run_{name}", init))
        assert step0.card.input.mean == [127.5] * 3 and step0.card.input.std == [127.5] * 3
        actual = step0.forward(faces)
        relative = np.abs(actual - expected).max() / np.abs(expected).max()
        assert relative < 1e-5, (init, relative)
        assert _cosines(actual, expected).min() > 0.99999
    # the same weights fed the trainer's (x - 127.5) / 127.5 without folding differ by ~3e-3: the test can tell
    unfolded = original.runner(torch.from_numpy((faces - 127.5) / 127.5)).detach().numpy()
    assert np.abs(unfolded - expected).max() / np.abs(expected).max() > 1e-3
