import numpy as np
import pytest
from PIL import Image

from marginface.cleaning import embedders as em


def _tree(root, spec):
    for rel in spec:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / rel)


def test_select_images_caps_skips_and_folds_nested_folders(tmp_path):
    _tree(tmp_path, ["001/frontal/01.jpg", "001/frontal/02.jpg", "001/profile/01.jpg", "002/frontal/01.jpg",
                     "003/frontal/01.jpg", "003/frontal/02.jpg", "003/frontal/03.jpg"])
    got = em.select_images(tmp_path, "*/frontal/*", max_per_identity=2, min_images=2)
    assert got == [("001/frontal__01.jpg", "001/frontal/01.jpg"), ("001/frontal__02.jpg", "001/frontal/02.jpg"),
                   ("003/frontal__01.jpg", "003/frontal/01.jpg"), ("003/frontal__02.jpg", "003/frontal/02.jpg")]
    rest = em.select_images(tmp_path, "*/frontal/*", max_per_identity=3, min_images=2, skip_per_identity=1)
    assert [n for n, _ in rest] == ["001/frontal__02.jpg", "003/frontal__02.jpg", "003/frontal__03.jpg"]
    assert em.image_names(tmp_path / "001") == ["frontal/01.jpg", "frontal/02.jpg", "profile/01.jpg"]


def test_embed_folder_npz_round_trip_keeps_root_and_paths(tmp_path):
    _tree(tmp_path / "img", ["a/1.png", "a/2.png", "b/sub/1.png"])
    data = em.embed_folder(tmp_path / "img", lambda paths: np.stack([np.arange(4.0) + i for i in range(len(paths))]),
                           pattern="**/*")
    assert data.names == ["a/1.png", "a/2.png", "b/sub__1.png"] and data.classes == ["a", "b"]
    back = em.load_npz(em.save_npz(tmp_path / "e.npz", data))
    assert back.names == data.names and np.array_equal(back.embeddings, data.embeddings)
    assert back.image_path(2) == (tmp_path / "img" / "b/sub/1.png").resolve() and back.image_path(2).is_file()
    with pytest.raises(ValueError, match="returned 1 rows for 3 images"):
        em.embed_folder(tmp_path / "img", lambda paths: np.zeros((1, 4)), pattern="**/*")


def test_concat_dedupes_and_refuses_mixed_roots():
    a = em.from_names(["x/1", "y/1"], np.eye(2))
    b = em.from_names(["y/1", "y/2"], np.eye(2)[::-1])
    both = em.concat([a, b])
    assert both.names == ["x/1", "y/1", "y/2"] and np.array_equal(both.embeddings, [[1, 0], [0, 1], [1, 0]])
    other = em.LabelledEmbeddings(b.names, b.labels, b.classes, b.embeddings, "/elsewhere")
    with pytest.raises(ValueError, match="different image roots"):
        em.concat([a, other])
