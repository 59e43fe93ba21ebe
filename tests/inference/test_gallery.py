import sqlite3

import numpy as np
import pytest

from marginface.errors import UserError
from marginface.inference.card import ModelCard
from marginface.inference.gallery import Gallery

D = 16


def _card(h="a"):
    return ModelCard(backbone="mobilefacenet", embedding_size=D, weights_sha256=h * 64)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _gallery(n=50, seed=0):
    card = _card()
    gallery = Gallery.create(card)
    vectors = np.random.default_rng(seed).normal(size=(n, D))
    gallery.add_many([f"id{i}" for i in range(n)], _unit(vectors), card)
    return gallery, card


def test_template_is_normalised_mean_of_normalised_embeddings():
    card = _card()
    gallery = Gallery.create(card)
    rng = np.random.default_rng(1)
    first, more = rng.normal(size=(3, D)) * 5, rng.normal(size=(4, D)) * 0.1  # unnormalised on purpose
    gallery.add("ann", first, card)
    gallery.add("ann", more, card)
    ref = np.zeros(D)
    for row in np.concatenate([first, more]).astype(np.float64):  # float64 loop reference
        ref += row / np.sqrt(sum(v * v for v in row))
    ref /= np.sqrt(sum(v * v for v in ref))
    np.testing.assert_allclose(gallery.template("ann"), ref, atol=1e-6)
    assert gallery.images("ann") == 7


def test_search_matches_brute_force_and_remove_rename():
    gallery, card = _gallery()
    probes = np.random.default_rng(5).normal(size=(7, D))
    ref = _unit(probes) @ gallery.vectors.T.astype(np.float64)
    results = gallery.search(probes, k=3, model=card)
    for row, matches in zip(ref, results):
        order = np.argsort(-row)[:3]
        assert [m.name for m in matches] == [f"id{i}" for i in order]
        np.testing.assert_allclose([m.score for m in matches], row[order], atol=1e-5)
    top = results[0][0].name
    gallery.remove(top)
    assert top not in gallery and len(gallery) == 49
    assert gallery.search(probes[:1], 1, model=card)[0][0].name == results[0][1].name
    gallery.rename("id7", "seven")
    assert "seven" in gallery and "id7" not in gallery
    with pytest.raises(ValueError, match="already enrolled"):
        gallery.rename("seven", "id8")
    with pytest.raises(ValueError, match="already enrolled"):
        gallery.add_many(["id8"], _unit(probes[:1]), card)


def test_approximate_search_visiting_every_cell_equals_exact():
    gallery, card = _gallery(n=3000)
    probes = gallery.vectors[::10] + np.random.default_rng(2).normal(scale=0.05, size=(300, D))
    exact = gallery.search_rows(_unit(probes).astype(np.float32), 1, exact=True)[1]
    gallery.nprobe = 3  # all cells: IVF then visits every row
    approx = gallery.search_rows(_unit(probes).astype(np.float32), 1, exact=False)[1]
    np.testing.assert_array_equal(exact, approx)
    assert (exact[:, 0] == np.arange(0, 3000, 10)).mean() > 0.95


def test_other_model_is_refused(tmp_path):
    gallery, card = _gallery()
    with pytest.raises(UserError, match="enrolled with model sha256 aaaa.*different models"):
        gallery.search(np.ones(D), 1, model=_card("b"))
    with pytest.raises(UserError, match="different models"):
        gallery.add("x", np.ones(D), _card("b"))
    fp16 = _card()
    fp16.precision = "fp16"
    with pytest.raises(UserError):
        gallery.search(np.ones(D), 1, model=fp16)
    gallery.save(tmp_path / "g")
    with pytest.raises(UserError, match="different models"):
        Gallery.load(tmp_path / "g").search(np.ones(D), 1, model=_card("b"))
    other = Gallery.create(_card("b"))
    other.add("x", np.ones(D), _card("b"))
    with pytest.raises(UserError, match="holds a gallery of another model"):
        other.save(tmp_path / "g")
    assert len(Gallery.load(tmp_path / "g")) == 50


def test_save_load_roundtrip(tmp_path):
    gallery, card = _gallery()
    gallery.add("id3", np.ones((2, D)), card)
    gallery.save(tmp_path / "g")
    loaded = Gallery.load(tmp_path / "g")
    assert loaded.names == gallery.names and loaded.images("id3") == 3
    np.testing.assert_array_equal(loaded.vectors, gallery.vectors)
    loaded.add("id3", np.ones((1, D)), card)  # the sum survives the round trip
    gallery.add("id3", np.ones((1, D)), card)
    np.testing.assert_allclose(loaded.template("id3"), gallery.template("id3"), atol=1e-7)
    assert not list((tmp_path / "g").rglob("*.pkl")) and not list((tmp_path / "g").rglob("*.pickle"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(UserError, match="not a gallery folder"):
        gallery.save(tmp_path / "other")


def test_crash_mid_save_loses_nothing(tmp_path, monkeypatch):
    gallery, card = _gallery()
    gallery.save(tmp_path / "g")
    gallery.add_many(["new"], _unit(np.ones((1, D))), card)

    def crash(self, tmp):  # the process dies after writing half of the vectors file
        (tmp / "vectors.npy").write_bytes(b"\x93NUMPY" + b"\0" * 100)
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(Gallery, "_write_version", crash)
    with pytest.raises(KeyboardInterrupt):
        gallery.save()
    monkeypatch.undo()
    loaded = Gallery.load(tmp_path / "g")  # the last complete save, intact
    assert len(loaded) == 50 and "new" not in loaded
    gallery.save()  # the next save succeeds and clears the debris
    assert "new" in Gallery.load(tmp_path / "g")
    assert not list((tmp_path / "g").glob(".tmp-*"))


def test_damaged_current_version_names_file_and_fix(tmp_path):
    gallery, card = _gallery()
    gallery.save(tmp_path / "g")
    gallery.add_many(["new"], _unit(np.ones((1, D))), card)
    gallery.save()
    current = tmp_path / "g" / (tmp_path / "g" / "CURRENT").read_text()
    data = (current / "vectors.npy").read_bytes()
    (current / "vectors.npy").write_bytes(data[: len(data) // 2])  # truncated after the fact
    with pytest.raises(UserError, match=r"vectors.npy.*truncated.*previous save .*v000001 is intact"):
        Gallery.load(tmp_path / "g")
    assert len(Gallery.load(tmp_path / "g", version="v000001")) == 50
    (current / "gallery.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(UserError, match="gallery.sqlite|file is not a database"):
        Gallery.load(tmp_path / "g")
    with pytest.raises(FileNotFoundError, match="not a gallery folder"):
        Gallery.load(tmp_path)


def test_sqlite_holds_names_and_no_pickle(tmp_path):
    gallery, _ = _gallery(n=3)
    gallery.save(tmp_path / "g")
    version = (tmp_path / "g" / "CURRENT").read_text()
    db = sqlite3.connect(tmp_path / "g" / version / "gallery.sqlite")
    assert [r[0] for r in db.execute("SELECT name FROM identities ORDER BY row")] == ["id0", "id1", "id2"]
    np.load(tmp_path / "g" / version / "vectors.npy", allow_pickle=False)


@pytest.mark.slow
def test_enroll_folder_skips_bad_images_when_asked(tmp_path):
    from PIL import Image

    from marginface.inference.recognizer import FaceRecognizer
    from tests.inference.helpers import save_tiny

    rec = FaceRecognizer.load(save_tiny(tmp_path / "m.safetensors", flip=False))
    rng = np.random.default_rng(0)
    for person in ("ann", "bob"):
        (tmp_path / "people" / person).mkdir(parents=True)
        for j in range(2):
            Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(
                tmp_path / "people" / person / f"{j}.png")
    (tmp_path / "people" / "bob" / "broken.png").write_bytes(b"not an image")
    gallery = Gallery.create(rec.card)
    with pytest.raises(ValueError, match="broken.png"):
        gallery.enroll_folder(rec, tmp_path / "people")
    gallery = Gallery.create(rec.card)
    report = gallery.enroll_folder(rec, tmp_path / "people", skip_bad=True)
    assert report["images"] == 4 and [s["path"][-10:] for s in report["skipped"]] == ["broken.png"]
    assert gallery.images("ann") == 2 and gallery.images("bob") == 2
    ref = rec.embed(sorted((tmp_path / "people" / "bob").glob("[01].png"))).astype(np.float64).sum(0)
    np.testing.assert_allclose(gallery.template("bob"), ref / np.linalg.norm(ref), atol=1e-6)
    # enrolling the same files again adds nothing (content hash), a new photo is added, a copy under another
    # identity's folder is recognised as the same file
    again = gallery.enroll_folder(rec, tmp_path / "people", skip_bad=True)
    assert again["images"] == 0 and len(again["already_enrolled"]) == 4 and gallery.images("bob") == 2
    np.testing.assert_allclose(gallery.template("bob"), ref / np.linalg.norm(ref), atol=1e-6)
    (tmp_path / "people" / "bob" / "copy.png").write_bytes((tmp_path / "people" / "ann" / "0.png").read_bytes())
    Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(tmp_path / "people" / "bob" / "2.png")
    third = gallery.enroll_folder(rec, tmp_path / "people", skip_bad=True)
    assert third["images"] == 1 and gallery.images("bob") == 3
    assert {"path": str(tmp_path / "people" / "bob" / "copy.png"), "identity": "ann"} in third["already_enrolled"]
    gallery.save(tmp_path / "g")
    loaded = Gallery.load(tmp_path / "g")  # the hashes survive a save
    assert loaded.enroll_folder(rec, tmp_path / "people", skip_bad=True)["images"] == 0
