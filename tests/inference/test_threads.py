"""The inference thread default: $MARGINFACE_THREADS, else min(physical cores, 4) less the busy cores, >= 1."""

import pytest
import torch

from marginface.errors import UserError
from marginface.inference import threads as th
from tests.inference.helpers import save_tiny


@pytest.mark.parametrize("cores, load, expected", [
    (8, 0.0, 4),    # idle 8-core: capped at 4
    (2, 0.0, 2),    # idle 2-core: both
    (2, 17.1, 1),   # the shared 2-core machine of the measurements: one thread, never zero
    (8, 5.6, 2),    # 8 cores, ~6 busy: the 2 free ones
    (1, 0.0, 1),
    (16, 12.4, 4),  # 4 free of 16
])
def test_default_threads(monkeypatch, cores, load, expected):
    monkeypatch.delenv(th.THREADS_ENV, raising=False)
    monkeypatch.setattr(th, "physical_cores", lambda: cores)
    assert th.default_threads(load) == expected


def test_the_environment_variable_wins_and_is_checked(monkeypatch):
    monkeypatch.setattr(th, "physical_cores", lambda: 8)
    monkeypatch.setenv(th.THREADS_ENV, "3")
    assert th.default_threads(0.0) == 3 and th.default_threads(100.0) == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(th.THREADS_ENV, bad)
        with pytest.raises(UserError, match=f"MARGINFACE_THREADS='{bad}': expected a positive integer"):
            th.default_threads()


def test_physical_cores_counts_cores_not_hyperthreads(monkeypatch):
    import os

    monkeypatch.setattr(th, "_threads_per_core", lambda: 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert th.physical_cores() == 4


def test_recognizer_and_cli_set_the_threads(tmp_path, monkeypatch, capsys):
    import numpy as np
    from PIL import Image

    from marginface.cli import main
    from marginface.inference import FaceRecognizer

    model = save_tiny(tmp_path / "m.safetensors", flip=False)
    Image.fromarray(np.full((112, 112, 3), 90, np.uint8)).save(tmp_path / "a.png")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv(th.THREADS_ENV, "1")
        assert FaceRecognizer.load(model).threads == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv(th.THREADS_ENV)
        torch.set_num_threads(2)
        assert FaceRecognizer.load(model, threads=0).threads == 0 and torch.get_num_threads() == 2  # left alone
        assert main(["verify", str(tmp_path / "a.png"), str(tmp_path / "a.png"), "--model", str(model),
                     "--threshold", "0.5", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1 and capsys.readouterr().out.startswith("same person")
    finally:
        torch.set_num_threads(before)
