"""The study's child-process jobs: errors exit as ``marginface`` exits, and the evaluation job's JSON equals what
``marginface eval --json`` prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from marginface.experiments import study_worker


def test_a_bad_run_config_exits_2_with_the_message_in_one_line(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    job = {"task": "train", "preset": "synthetic_mobilefacenet_arcface",
           "overrides": ["loss.name=nosuchloss", f"output_dir={tmp_path / 'run'}"]}
    assert study_worker.main([json.dumps(job)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("marginface train: ") and "nosuchloss" in err[0]
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_an_unknown_task_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert study_worker.main([json.dumps({"task": "fit"})]) == 2
    assert "use 'train' or 'evaluate'" in capsys.readouterr().err


@pytest.mark.slow
def test_the_evaluation_job_writes_what_marginface_eval_json_prints(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A run's one-step checkpoint (the trainer's, with its model card), evaluated by the job and by the command."""
    from tests.experiments.test_study import TINY, _bin

    from marginface.cli import main

    assert main(["train", "--config", "synthetic_mobilefacenet_arcface", *TINY, "steps=1",
                 f"output_dir={tmp_path / 'run'}"]) == 0
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000001" / "model.safetensors"
    capsys.readouterr()
    held = _bin(tmp_path / "held.bin")
    result = tmp_path / "out" / "eval.json"
    job = {"task": "evaluate", "checkpoint": str(checkpoint), "bins": [str(held)], "flip": False, "device": "cpu",
           "result": str(result)}
    assert study_worker.main([json.dumps(job)]) == 0
    printed = capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(checkpoint), "--bins", str(held), "--json", "--roc", "", "--no-flip",
                 "--device", "cpu"]) == 0
    command = json.loads(capsys.readouterr().out)
    assert json.loads(result.read_text()) == json.loads(printed) == command
    assert 0.0 <= command["verification"][0]["accuracy"] <= 1.0
