"""A checkpoint's model rebuilt from its run folder alone equals the trainer's model at that step."""

from __future__ import annotations

import pytest
import torch

from marginface.runs import RunDir
from marginface.runs.model import load_run_model


@pytest.mark.slow
def test_the_rebuilt_model_is_the_trainers(tmp_path):
    from marginface.training.config import load_config
    from marginface.training.trainer import Trainer

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer(load_config(None, [
            "model.backbone=mobilefacenet", "model.embedding_size=16", "data.synthetic_identities=4",
            "data.synthetic_images_per_identity=2", "batch_size=4", "steps=2", "device=cpu", "checkpoint_every=1",
            f"output_dir={tmp_path}"])).setup()
        trainer.fit()
        backbone, loss, dataset = load_run_model(tmp_path, 2)
        images = torch.stack([dataset[i][0] for i in range(len(dataset))])
        trainer.backbone.eval()
        with torch.no_grad():
            assert torch.equal(backbone(images), trainer.backbone(images))
        assert torch.equal(loss.weight, trainer.loss.weight.detach())
        assert dataset.num_classes == 4 and RunDir(tmp_path).steps() == [1, 2]
        with pytest.raises(ValueError, match=r"no checkpoint at step 5; available: \[1, 2\]"):
            load_run_model(tmp_path, 5)
    finally:
        torch.set_num_threads(before)
