"""A checkpoint's model rebuilt from its run folder alone: the backbone and loss of a step, and the run's images.

The analysis figures (theta distributions over the training images at several steps, ArcFace Fig. 5(b)) need
the loss's class centres as well as the backbone, which the model card of ``best.safetensors`` does not promise
(sharded runs keep only the backbone there). So the model is built from the run's saved ``config.json`` — the
``model``, ``loss`` and ``data`` sections, read as saved — and filled from the step's checkpoint, however many
shards it was saved in (:class:`~marginface.runs.steps.SavedStep`). Nothing here needs the trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from marginface.runs.checkpoints import load_model_tensors
from marginface.runs.layout import RunDir

#: ``config.json`` ``data`` fields that say which images a run trained on (the others are loader settings)
DATA_FIELDS = ("path", "synthetic_identities", "synthetic_images_per_identity", "synthetic_seed",
               "exclude_identities", "image_list")


def run_dataset(config: dict[str, Any]) -> Dataset:
    """The training images of a run from its saved configuration (fields it lacks keep their defaults)."""
    from marginface.data.sources import open_training_data

    data = config["data"]
    return open_training_data(data.get("source", "synthetic"), **{k: data[k] for k in DATA_FIELDS if k in data})


def run_backbone(config: dict[str, Any]) -> nn.Module:
    """The run's backbone, untrained, as the trainer built it (``model.backbone`` / ``embedding_size`` / ``dropout``
    / ``output`` / ``params``; a field absent from an older config.json keeps the backbone's default)."""
    from marginface import backbones

    model = config["model"]
    kwargs = {k: model[k] for k in ("dropout", "output") if k in model}
    return backbones.create(model["backbone"], embedding_size=model["embedding_size"], **kwargs,
                            **model.get("params", {}))


def run_loss(config: dict[str, Any], num_classes: int) -> nn.Module:
    """The run's margin loss (its class centres untrained) for ``num_classes`` identities."""
    from marginface import losses

    loss = config["loss"]
    return losses.create(loss["name"], embedding_size=config["model"]["embedding_size"], num_classes=num_classes,
                         **loss.get("params", {}))


def load_run_model(run_dir: str | Path, step: int) -> tuple[nn.Module, nn.Module, Dataset]:
    """(backbone, loss, dataset) of checkpoint ``step`` of a run, on the CPU, in eval mode; the loss holds the
    whole centre matrix whatever number of shards the run saved it in."""
    run = RunDir(run_dir)
    config = run.read_config()
    if step not in run.steps():
        raise ValueError(f"{run.path}: no checkpoint at step {step}; available: {run.steps()}")
    dataset = run_dataset(config)
    backbone, loss = run_backbone(config), run_loss(config, dataset.num_classes)
    weights = run.saved_step(step).files_for(1, 0, dataset.num_classes, optimizer_ids={}).model
    load_model_tensors(weights, backbone, loss)
    return backbone.eval(), loss.eval(), dataset
