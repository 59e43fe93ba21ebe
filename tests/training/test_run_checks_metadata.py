"""The resume classes of config keys come from the fields' metadata (training/config.py), not from lists far away."""

from __future__ import annotations

import dataclasses

from marginface.training import run_checks
from marginface.training.config import SCHEDULE, TrainConfig, resume_kinds


def test_derived_key_sets_are_the_declared_ones():
    # the sets as run_checks.py spelled them before they moved onto the fields: a field losing or gaining its
    # declaration changes what a resume accepts, so the move must not change them
    schedule = {"optim.lr", "optim.milestones", "optim.gamma", "optim.warmup_steps", "steps", "epochs", "grad_clip",
                "precision"}
    settings = {"log_every", "checkpoint_every", "validation.", "device", "data.num_workers", "output_dir",
                "model.checkpointing", "channels_last", "deterministic", "grad_accum_steps"}
    placement = {"loss.sharded", "loss.chunk_size", "loss.fused_update"}
    derived = run_checks.SCHEDULE_KEYS, run_checks.RUN_SETTING_KEYS, run_checks.PLACEMENT_KEYS
    assert derived == (schedule, settings, placement)


def test_every_declared_key_names_a_config_key():
    flat = run_checks.flatten(dataclasses.asdict(TrainConfig()))
    for key in resume_kinds():
        assert any(k == key or (key.endswith(".") and k.startswith(key)) for k in flat), key


@dataclasses.dataclass
class _Section:
    rate: float = dataclasses.field(default=0.1, metadata=SCHEDULE)
    size: int = 3


@dataclasses.dataclass
class _Config:
    part: _Section = dataclasses.field(default_factory=_Section)


def test_a_new_declaration_is_picked_up():
    assert resume_kinds(_Config) == {"part.rate": "schedule"}
    assert run_checks.kind_of("optim.lr") == "schedule" and run_checks.kind_of("validation.every") == "setting"
    assert run_checks.kind_of("optim.momentum") == "breaking"
