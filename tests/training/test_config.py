"""Configs: every preset parses, the demo equals its preset, overrides apply, bad values name their field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from marginface.experiments.demo import demo_config
from marginface.training.config import ConfigError, load_config
from marginface.training.schedules import learning_rate

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_there_are_presets():
    assert len(CONFIGS) >= 4


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_preset_parses_and_is_named_dataset_backbone_loss(path):
    config = load_config(path)
    assert config.model.backbone in path.stem and config.loss.name in path.stem


def test_the_demo_preset_matches_the_demo():
    preset = load_config(Path(CONFIGS[0]).parent / "synthetic_mobilefacenet_arcface.yaml")
    demo = demo_config(preset.output_dir)
    assert dataclasses.replace(preset, precision=demo.precision) == demo  # fp32 where the CPU lacks bf16
    assert preset.precision == "bf16"


def test_paper_recipe_schedule():
    config = load_config(Path(CONFIGS[0]).parent / "ms1mv2_iresnet100_arcface.yaml")
    assert (config.optim.lr, config.optim.momentum, config.optim.weight_decay) == (0.1, 0.9, 5e-4)
    assert [learning_rate(s, config.optim) for s in (0, 99_999, 100_000, 160_000)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.001])


def test_overrides_are_parsed_as_yaml():
    config = load_config(None, ["optim.lr=0.05", "loss.params={scale: 30, margin: 0.4}", "optim.milestones=[5, 9]"])
    assert config.optim.lr == 0.05 and config.loss.params == {"scale": 30, "margin": 0.4}
    assert config.optim.milestones == [5, 9]


@pytest.mark.parametrize("override, field", [
    ("optim.lr=-1", "optim.lr"),
    ("optim.momentum=1.5", "optim.momentum"),
    ("loss.head=sparse", "loss.head"),
    ("loss.sample_rate=0", "loss.sample_rate"),
    ("loss.chunk_size=0", "loss.chunk_size"),
    ("loss.fused_update=true", "loss.fused_update"),  # needs the chunked head
    ("epochs=-1", "epochs"),
    ("loss.sharded=true", "loss.sharded"),  # the dense head cannot be sharded
    ("precision=fp8", "precision"),
    ("batch_size=1", "batch_size"),
    ("data.source=folder", "data.path"),
    ("model.output=F", "model.output"),
    ("optim.milestones=[10, 5]", "optim.milestones"),
    ("steps=many", "steps"),
    ("optim.bogus=1", "optim"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])


@pytest.mark.parametrize("override", ["grad_accum_steps=2", "precision=fp16"])
def test_fused_update_refuses_what_it_cannot_see(override):
    with pytest.raises(ConfigError, match=r"loss\.fused_update"):
        load_config(None, ["loss.head=chunked", "loss.fused_update=true", override])


def test_sharded_centres_need_several_processes(tmp_path):
    from marginface.training.trainer import Trainer

    config = load_config(None, ["loss.head=chunked", "loss.sharded=true", f"output_dir={tmp_path}",
                                "data.synthetic_identities=4", "model.backbone=mobilefacenet", "device=cpu"])
    with pytest.raises(ValueError, match="torchrun"):
        Trainer(config).setup()


def test_missing_config_file_and_bad_override_syntax():
    with pytest.raises(FileNotFoundError, match="configs/"):
        load_config("configs/nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.lr"])


def test_missing_data_path_is_a_clear_error(tmp_path):
    from marginface.training.trainer import Trainer

    config = load_config(None, ["data.source=folder", f"data.path={tmp_path / 'nowhere'}",
                                f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Trainer(config).setup()


def test_epochs_become_steps_once_the_data_size_is_known():
    from marginface.training.config import resolve_epochs

    config = load_config(None, ["epochs=2.5", "batch_size=64", "optim.milestones=[1, 2.25]", "optim.warmup_steps=1"])
    resolved = resolve_epochs(config, num_images=1000)  # ceil(1000 / 64) = 16 steps per epoch
    assert (resolved.steps, resolved.optim.milestones, resolved.optim.warmup_steps) == (40, [16, 36], 16)
    assert resolved.epochs == 0 and resolve_epochs(resolved, 1000) == resolved
    plain = load_config(None, ["steps=7"])
    assert resolve_epochs(plain, 1000) is plain


def test_exponent_floats_without_a_dot_are_floats():
    """PyYAML (YAML 1.1) reads ``1e-3`` as a string; for a float field it is the number a person means."""
    config = load_config(None, ["optim.lr=1e-3", "optim.weight_decay=5E-4"])
    assert config.optim.lr == 0.001 and config.optim.weight_decay == 0.0005
    with pytest.raises(ConfigError, match="config field optim.lr: expected float, got 'fast'"):
        load_config(None, ["optim.lr=fast"])
