"""Resume checks: a changed run is refused with the diff and the ways out; schedule changes need a flag and are
recorded; config.json is never overwritten silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from marginface.cli import main
from marginface.training import run_checks
from marginface.training.config import config_to_dict, load_config

TINY = [
    "model.backbone=mobilefacenet", "model.embedding_size=32", "data.synthetic_images_per_identity=2",
    "data.synthetic_identities=6", "batch_size=4", "log_every=1", "device=cpu", "deterministic=true",
    "optim.lr=0.05", "checkpoint_every=2",
]


def test_changes_are_classified() -> None:
    old = config_to_dict(load_config(None, TINY))
    new = config_to_dict(load_config(None, [*TINY, "optim.lr=0.01", "loss.name=cosface", "log_every=5",
                                            "validation.every=3", "loss.params.scale=30"]))
    kinds = {c.key: (c.old, c.new, c.kind) for c in run_checks.config_changes(old, new)}
    assert kinds == {
        "optim.lr": (0.05, 0.01, "schedule"),
        "loss.name": ("arcface", "cosface", "breaking"),
        "loss.params": ({}, "<absent>", "breaking"),  # {} flattens to one key; the new params are nested keys
        "loss.params.scale": ("<absent>", 30.0, "breaking"),
        "log_every": (1, 5, "setting"),
        "validation.every": (0, 3, "setting"),
    }
    assert run_checks.kind_of("some.future_field") == "breaking"  # unknown fields are safe by default
    assert run_checks.kind_of("optim.momentum") == "breaking"  # the optimizer state would restore the old value


def test_check_resume_refuses_with_the_diff(tmp_path: Path) -> None:
    saved = config_to_dict(load_config(None, TINY))
    facts = {"world_size": 2, "identities": 6, "images": 12}
    run_checks.record_start(tmp_path, saved, 0, facts, [])
    # nothing to resume: a new run, every change accepted but returned (banner, history: never silent)
    other = config_to_dict(load_config(None, [*TINY, "loss.name=cosface"]))
    changes = run_checks.check_resume(tmp_path, other, facts, has_checkpoint=False)
    assert [(c.key, c.old, c.new) for c in changes] == [("loss.name", "arcface", "cosface")]
    with pytest.raises(run_checks.ResumeError) as err:
        run_checks.check_resume(tmp_path, saved, {**facts, "identities": 5})
    assert str(err.value).splitlines() == [
        f"{tmp_path} holds a run that this configuration cannot continue:",
        "  identities: 6 -> 5",
        f"start again with `fresh=True` (deletes {tmp_path}), or choose a new output_dir (e.g. output_dir=runs/new)",
    ]
    lr = config_to_dict(load_config(None, [*TINY, "optim.lr=0.2"]))
    with pytest.raises(run_checks.ResumeError, match="add `allow_schedule_change=True`"):
        run_checks.check_resume(tmp_path, lr, facts)
    changes = run_checks.check_resume(tmp_path, lr, facts, allow_schedule_change=True)
    assert [(c.key, c.kind) for c in changes] == [("optim.lr", "schedule")]
    # where the centres live is not what is learned: another number of processes is resharded on resume
    changes = run_checks.check_resume(tmp_path, saved, {**facts, "world_size": 3})
    assert [(c.key, c.old, c.new, c.kind) for c in changes] == [("world_size", 2, 3, "setting")]


@pytest.mark.parametrize(("override", "kind"), [
    ("loss.head=chunked", "setting"), ("loss.chunk_size=16", "setting"), ("loss.fused_update=true", "setting"),
    ("loss.head=partial_fc", "breaking"), ("loss.sample_rate=0.5", "breaking"),
])
def test_class_placement_changes_are_settings_but_sampling_is_not(override: str, kind: str) -> None:
    before = config_to_dict(load_config(None, TINY))  # a dense head
    after = config_to_dict(load_config(None, [*TINY, override, *(["loss.head=chunked"] if "fused" in override
                                                                 else [])]))
    changes = {c.key: c.kind for c in run_checks.config_changes(before, after)}
    assert changes[override.split("=")[0]] == kind


def _train(tmp_path: Path, *extra: str) -> int:
    return main(["train", *TINY, f"output_dir={tmp_path}", *extra])


@pytest.mark.slow
def test_cli_resume_checks_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train(tmp_path, "steps=2") == 0
    saved = (tmp_path / "config.json").read_text()
    capsys.readouterr()

    # another loss and embedding size: refused before anything is built, config.json untouched
    assert _train(tmp_path, "steps=4", "loss.name=cosface", "model.embedding_size=64") == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"marginface train: {tmp_path} holds a run that this configuration cannot continue:",
        '  loss.name: "arcface" -> "cosface"',
        "  model.embedding_size: 32 -> 64",
        f"start again with --fresh (deletes {tmp_path}), or choose a new output_dir (e.g. output_dir=runs/new)",
    ]
    # another batch size: the data order of the saved run cannot continue either
    assert _train(tmp_path, "steps=4", "batch_size=6") == 2
    assert "  batch_size: 4 -> 6" in capsys.readouterr().err.splitlines()
    # a longer schedule: needs the flag ...
    assert _train(tmp_path, "steps=4", "optim.lr=0.01") == 2
    err = capsys.readouterr().err.splitlines()
    assert err[:3] == [f"marginface train: {tmp_path}: the schedule differs from the saved run's:",
                       "  optim.lr: 0.05 -> 0.01", "  steps: 2 -> 4"]
    assert err[3].startswith("to continue with it, add --allow-schedule-change (recorded in ")  # the CLI's words
    assert (tmp_path / "config.json").read_text() == saved
    # ... and with it the run continues from step 2, and the change is recorded
    assert _train(tmp_path, "steps=4", "optim.lr=0.01", "--allow-schedule-change") == 0
    out = capsys.readouterr().out
    assert f"  start       step 2 of 4, resumed from {tmp_path / 'checkpoints' / 'step_00000002'}" in out
    assert "  changed     optim.lr: 0.05 -> 0.01 (schedule)" in out
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [h["event"] for h in history] == ["start", "resume"]
    assert history[1]["step"] == 2 and {c["key"] for c in history[1]["changes"]} == {"optim.lr", "steps"}
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["lr"] == 0.01
    # --fresh is the other way out
    assert _train(tmp_path, "steps=2", "loss.name=cosface", "--fresh") == 0
