import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from marginface.data.folder import FolderDataset, load_class_map
from marginface.data.transforms import RandomHorizontalFlip
from tests.data.helpers import face, make_folder, reference_tensor, write_image


def test_labels_sorted_by_name_and_pixels_exact(tmp_path):
    written = make_folder(tmp_path)
    dataset = FolderDataset(tmp_path)
    assert dataset.classes == ["alice", "bob", "carol"] and dataset.num_classes == 3 and len(dataset) == 9
    for index, (path, label) in enumerate(dataset.samples):
        image, got_label = dataset[index]
        assert got_label == label == dataset.classes.index(path.parent.name)
        assert image.dtype == torch.float32 and image.shape == (3, 112, 112)
        np.testing.assert_allclose(image.numpy(), reference_tensor(written[path]), rtol=0, atol=1e-6)


def test_class_map_round_trip_and_reuse(tmp_path):
    make_folder(tmp_path / "train")
    make_folder(tmp_path / "val", names=("carol",), per_identity=1)
    train = FolderDataset(tmp_path / "train")
    saved = train.save_class_map(tmp_path / "classes.json")
    assert json.loads(saved.read_text()) == {"alice": 0, "bob": 1, "carol": 2}
    assert load_class_map(saved) == train.class_to_label
    val = FolderDataset(tmp_path / "val", class_map=saved)
    assert val.num_classes == 3 and val[0][1] == 2
    with pytest.raises(ValueError, match="not in the given class map"):
        FolderDataset(tmp_path / "train", class_map={"alice": 0})
    (tmp_path / "bad.json").write_text('{"a": 0, "b": 2}')
    with pytest.raises(ValueError, match="labels 0..C-1"):
        load_class_map(tmp_path / "bad.json")


def test_corrupt_jpeg_names_the_file_or_is_skipped_and_counted(tmp_path):
    make_folder(tmp_path, ext=".jpg")
    bad = tmp_path / "bob" / "01.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated mid-scan
    dataset = FolderDataset(tmp_path)
    index = [path for path, _ in dataset.samples].index(bad)
    with pytest.raises(ValueError, match=str(bad)):
        dataset[index]
    skipping = FolderDataset(tmp_path, skip_bad=True)
    assert skipping.skipped == [bad] and len(skipping) == 8 and "corrupt" in skipping.skip_reasons[bad]
    assert all(path != bad for path, _ in skipping.samples)


def test_non_image_file(tmp_path):
    make_folder(tmp_path)
    note = tmp_path / "alice" / "notes.txt"
    note.write_text("hello")
    with pytest.raises(ValueError, match=f"{note} is not an image file"):
        FolderDataset(tmp_path)
    dataset = FolderDataset(tmp_path, skip_bad=True)
    assert dataset.skipped == [note] and len(dataset) == 9
    # an image extension on a text file is caught by decoding
    note.rename(tmp_path / "alice" / "fake.png")
    dataset = FolderDataset(tmp_path, skip_bad=True)
    assert [p.name for p in dataset.skipped] == ["fake.png"] and len(dataset) == 9


def test_empty_identity_folder(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "bert").mkdir()
    with pytest.raises(ValueError, match="identity folder .*bert holds no images"):
        FolderDataset(tmp_path)
    dataset = FolderDataset(tmp_path, skip_bad=True)
    assert dataset.classes == ["alice", "bob", "carol"] and dataset.skipped == [tmp_path / "bert"]


def test_wrong_size_says_align_or_resize(tmp_path):
    write_image(tmp_path / "a" / "0.png", face(0, 0, size=150))
    with pytest.raises(ValueError, match="150x150, expected 112x112.*marginface align"):
        FolderDataset(tmp_path)[0]
    assert FolderDataset(tmp_path, resize=True)[0][0].shape == (3, 112, 112)


def test_missing_or_empty_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FolderDataset(tmp_path / "nope")
    with pytest.raises(ValueError, match="no usable images"):
        FolderDataset(tmp_path)


def test_transform_and_loader(tmp_path):
    written = make_folder(tmp_path, per_identity=2)
    dataset = FolderDataset(tmp_path, transform=RandomHorizontalFlip(p=1.0))
    path = dataset.samples[0][0]
    np.testing.assert_allclose(dataset[0][0].numpy(), reference_tensor(written[path][:, ::-1]), atol=1e-6)
    images, labels = next(iter(DataLoader(dataset, batch_size=4)))
    assert images.shape == (4, 3, 112, 112) and labels.tolist() == [0, 0, 1, 1]
