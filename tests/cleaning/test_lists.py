import numpy as np
from PIL import Image

from marginface.data.lists import read_lines, write_lines
from marginface.training.config import DataConfig
from marginface.training.data import build_dataset


def test_exclusion_list_and_image_list_reach_the_training_label_set(tmp_path):
    for ident in ("a", "b", "c"):
        (tmp_path / "data" / ident).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(np.zeros((112, 112, 3), np.uint8)).save(tmp_path / "data" / ident / f"{k}.png")
    exclude = write_lines(tmp_path / "ex.txt", ["b"], header="overlap")
    keep = write_lines(tmp_path / "keep.txt", ["a/0.png", "c/0.png", "c/1.png"])
    assert read_lines(exclude) == ["b"]
    ds = build_dataset(DataConfig(source="folder", path=str(tmp_path / "data"), exclude_identities=str(exclude),
                                  image_list=str(keep)))
    assert ds.classes == ["a", "c"] and len(ds) == 3 and ds.num_classes == 2


def test_shipped_exclusion_list_names_celeba_identities():
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[2] / "configs" / "celeba299_exclude_test_overlap.txt"
    names = read_lines(shipped)
    assert names == ["07270", "07458", "07380", "07249", "07355", "07218", "07398"]
