"""Old import paths of moved modules still work for one release, as the same objects as the new homes."""

from __future__ import annotations

import pytest


def test_old_paths_are_the_new_objects():
    from marginface.align import detections, detectors, mtcnn
    from marginface.cleaning import lists as old_lists
    from marginface.data import lists, pairs
    from marginface.evaluation import calibration
    from marginface.evaluation import pairs as old_pairs
    from marginface.inference import calibrate
    from marginface.metric import TripletHead, TripletLoss
    from marginface.metric.triplet import batch_all
    from marginface.training import config, finetune
    from marginface.triplet import head, loss

    assert (old_lists.read_lines, old_lists.write_lines) == (lists.read_lines, lists.write_lines)
    assert (old_pairs.read_pairs, old_pairs.PairsFile) == (pairs.read_pairs, pairs.PairsFile)
    assert calibrate.calibrate_scores is calibration.calibrate_scores
    assert (TripletHead, TripletLoss, batch_all) == (head.TripletHead, loss.TripletLoss, loss.batch_all)
    assert finetune.check_triplet_config is config.check_triplet_config
    assert detectors.Detections is detections.Detections is mtcnn.Detections


def test_the_pixel_limit_is_one_knob_under_both_names(tmp_path, monkeypatch):
    """inference.images is the data.images module itself: its error names the old path, so setting the limit
    there must change the check that align/ and inference/ both make."""
    from PIL import Image

    import marginface.inference.images as old
    from marginface.align.pipeline import read_rgb
    from marginface.data import images

    assert old is images
    path = tmp_path / "face.png"
    Image.new("RGB", (20, 10)).save(path)
    monkeypatch.setattr(old, "MAX_IMAGE_PIXELS", 199)
    with pytest.raises(ValueError, match=r"20 x 10 = 200 pixels, above the limit of 199 \(marginface.inference"):
        read_rgb(path)
    with pytest.raises(ValueError, match="above the limit of 199"):
        images.to_rgb_array(path)
