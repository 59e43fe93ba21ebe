"""The card built from a run config: models/ reads it as the mapping training wrote, without importing training.

The reference is the card as it was built before the move: from the parsed ``TrainConfig`` by attribute access.
"""

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from marginface import backbones
from marginface.models.card import RUN_CONFIG_DEFAULTS, card_from_run_config, tensors_sha256, training_card
from marginface.models.load import load_model
from marginface.training.config import TrainConfig, config_from_dict, config_to_dict


def _reference_card_json(config: TrainConfig, state: dict[str, torch.Tensor], ids: int, images: int) -> dict:
    """The pre-move card fields, read from the typed config by attribute (independent of run_config_sections)."""
    m, loss, data = config.model, config.loss, config.data
    return {"backbone": m.backbone, "embedding_size": m.embedding_size,
            "backbone_kwargs": {"output": m.output, "dropout": m.dropout, **m.params},
            "weights_sha256": tensors_sha256(state),
            "loss": {"name": loss.name, "params": dict(loss.params), "head": loss.head},
            "training_data": {"kind": data.source, "path": data.path, "identities": ids, "images": images}}


def _config() -> TrainConfig:
    return config_from_dict({"model": {"backbone": "mobilefacenet", "embedding_size": 32, "dropout": 0.1},
                             "loss": {"name": "cosface", "params": {"scale": 30.0, "margin": 0.3}},
                             "data": {"source": "folder", "path": "/data/faces"}})


def test_defaults_are_train_configs() -> None:
    values = config_to_dict(TrainConfig())
    for section, defaults in RUN_CONFIG_DEFAULTS.items():
        assert {k: values[section][k] for k in defaults} == defaults, section


@pytest.mark.parametrize("as_mapping", [False, True])
def test_training_card_same_from_typed_config_and_mapping(as_mapping: bool) -> None:
    config = _config()
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    given = json.loads(json.dumps(config_to_dict(config))) if as_mapping else config
    card = training_card(given, 7, 70, {"lfw": np.float64(0.5)}, state)
    got = dataclasses.asdict(card)
    for key, value in _reference_card_json(config, state, 7, 70).items():
        assert got[key] == value, key
    assert got["validation"] == {"lfw": 0.5} and isinstance(got["validation"]["lfw"], float)


def test_partial_run_config_takes_the_defaults(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model": {"backbone": "mobilefacenet", "embedding_size": 32}}))
    card = card_from_run_config(str(tmp_path / "config.json"), {})
    reference = _reference_card_json(config_from_dict({"model": {"backbone": "mobilefacenet", "embedding_size": 32}}),
                                     {}, 0, 0)
    assert card.backbone_kwargs == reference["backbone_kwargs"] and card.loss == reference["loss"]
    assert card.training_data == {"kind": "synthetic", "path": None}


@pytest.mark.parametrize(("text", "match"), [("not json", "is not JSON"), ('{"model": 3}', "must be a mapping")])
def test_bad_run_config_is_named(tmp_path, text: str, match: str) -> None:
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=match):
        card_from_run_config(str(tmp_path / "config.json"), {})


def test_legacy_file_loads_with_its_run_config(tmp_path) -> None:
    """A file without a card + the run's config.json: the backbone it describes, with identical outputs."""
    config = _config()
    torch.manual_seed(0)
    model = backbones.create("mobilefacenet", embedding_size=32, output=config.model.output, dropout=0.1).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file({f"backbone.{k}": v for k, v in state.items()}, str(tmp_path / "best.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config_to_dict(config)))
    loaded = load_model(tmp_path / "best.safetensors", config=tmp_path / "config.json")
    assert loaded.card.loss == {"name": "cosface", "params": {"scale": 30.0, "margin": 0.3}, "head": "dense"}
    assert loaded.card.source == f"run config {tmp_path / 'config.json'}"
    assert loaded.card.weights_sha256 == tensors_sha256(state)
    x = torch.rand(2, 3, 112, 112) * 255
    with torch.no_grad():
        expected = model((x.double() / 127.5 - 1).float()).numpy()
    np.testing.assert_allclose(loaded.forward(x), expected, rtol=1e-4, atol=1e-5)
