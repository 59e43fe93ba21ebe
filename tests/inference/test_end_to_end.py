"""Raw LFW photos -> FaceRecognizer (detect, align, embed) -> Gallery (enrol, save, load) -> identify."""

import numpy as np
import pytest
from PIL import Image

from marginface.inference.gallery import Gallery
from marginface.inference.recognizer import FaceRecognizer
from tests.inference.helpers import LFW, save_tiny

pytestmark = pytest.mark.slow


def test_raw_photos_to_gallery_to_identify(shared_data, tmp_path):
    people = sorted(p for p in (shared_data / LFW).iterdir() if len(list(p.glob("*.jpg"))) >= 2)[:5]
    for person in people:  # enrol two raw 250x250 photos per person
        (tmp_path / "enrol" / person.name).mkdir(parents=True)
        for photo in sorted(person.glob("*.jpg"))[:2]:
            (tmp_path / "enrol" / person.name / photo.name).symlink_to(photo)
    recognizer = FaceRecognizer.load(save_tiny(tmp_path / "m.safetensors"))
    gallery = Gallery.create(recognizer.card)
    report = gallery.enroll_folder(recognizer, tmp_path / "enrol")
    assert report["identities"] == 5 and report["images"] == 10 and not report["skipped"]
    gallery.save(tmp_path / "g")
    gallery = Gallery.load(tmp_path / "g")
    for person in people:
        # the probe: an enrolled photo re-encoded (JPEG q=80) and rescaled to 300x300 — a different file and
        # pixel grid, so detection and alignment run afresh; it must come back as its own identity
        photo = Image.open(sorted(person.glob("*.jpg"))[0]).convert("RGB").resize((300, 300), Image.BICUBIC)
        photo.save(tmp_path / "probe.jpg", quality=80)
        matches, info = recognizer.identify(tmp_path / "probe.jpg", gallery, k=3)
        assert not info.aligned_input and info.faces >= 1
        assert matches[0].name == person.name, (person.name, matches)
        probe = recognizer.embed(tmp_path / "probe.jpg")[0].astype(np.float64)
        expected = gallery.template(person.name).astype(np.float64) @ probe
        assert matches[0].score == pytest.approx(expected, abs=1e-5)
