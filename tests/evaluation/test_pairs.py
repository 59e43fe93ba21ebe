"""pairs.txt parsing: fold structure, names, and errors naming the line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from marginface.data.pairs import read_pairs, resolve_images

PAIRS = """2\t2
Ann\t1\t2
Bob\t1\t3
Ann\t1\tBob\t2
Cy\t1\tBob\t1
Cy   1   2
Ann 2 3
Bob\t3\tCy\t2
Ann\t3\tCy\t1
"""


def write_tree(root: Path, counts: dict[str, int]) -> None:
    for person, n in counts.items():
        (root / person).mkdir(parents=True, exist_ok=True)
        for i in range(1, n + 1):
            (root / person / f"{person}_{i:04d}.jpg").write_bytes(b"")


def test_read_pairs_keeps_folds_and_order(tmp_path: Path) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text(PAIRS)
    pairs = read_pairs(path)
    assert len(pairs) == 8
    assert pairs.issame.tolist() == [True, True, False, False] * 2
    assert pairs.folds.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert pairs.lines.tolist() == list(range(2, 10))
    assert pairs.names[0].tolist() == ["Ann/Ann_0001.jpg", "Ann/Ann_0002.jpg"]
    assert pairs.names[3].tolist() == ["Cy/Cy_0001.jpg", "Bob/Bob_0001.jpg"]
    assert pairs.unique_names()[:3] == ["Ann/Ann_0001.jpg", "Ann/Ann_0002.jpg", "Bob/Bob_0001.jpg"]


def test_single_number_header_is_one_fold(tmp_path: Path) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text("1\nAnn 1 2\nAnn 1 Bob 1\n")
    pairs = read_pairs(path)
    assert pairs.folds.tolist() == [0, 0] and pairs.issame.tolist() == [True, False]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("ten 300\n", "expected the header"),
        ("1 1\nAnn 1 2\n", "found 1"),
        ("1 1\nAnn 1 Bob 2\nAnn 1 2\n", r"pairs.txt:2: a mismatched pair out of place"),
        ("1 1\nAnn 1 2\nAnn 1 Bob 2 3\n", r"pairs.txt:3: expected 'name i j'"),
        ("1 1\nAnn 1 x\nAnn 1 Bob 2\n", r"pairs.txt:2: image number 'x'"),
    ],
)
def test_malformed_pairs_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_pairs(path)


def test_resolve_images_and_missing_image_names_line(tmp_path: Path) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text(PAIRS)
    pairs = read_pairs(path)
    write_tree(tmp_path / "img", {"Ann": 3, "Bob": 3, "Cy": 2})
    files = resolve_images(pairs, tmp_path / "img")
    assert len(files) == 8 and files["Cy/Cy_0002.jpg"] == tmp_path / "img" / "Cy" / "Cy_0002.jpg"
    (tmp_path / "img" / "Bob" / "Bob_0003.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"pairs line 3 names Bob/Bob_0003.jpg, but .*Bob_0003.jpg"):
        resolve_images(pairs, tmp_path / "img")
    with pytest.raises(FileNotFoundError, match="image folder"):
        resolve_images(pairs, tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="pairs file"):
        read_pairs(tmp_path / "nope.txt")


def test_real_lfw_pairs(shared_data: Path) -> None:
    pairs = read_pairs(shared_data / "lfw" / "pairs.txt")
    assert len(pairs) == 6000
    assert np.bincount(pairs.folds).tolist() == [600] * 10
    assert [int(pairs.issame[pairs.folds == k].sum()) for k in range(10)] == [300] * 10
    files = resolve_images(pairs, shared_data / "lfw" / "lfw-deepfunneled")
    assert len(files) == len(pairs.unique_names())


def test_pairs_names_cannot_leave_the_image_folder(tmp_path: Path) -> None:
    for person in ("..", "../etc", "a/b", "."):
        path = tmp_path / "pairs.txt"
        path.write_text(f"1 1\n{person} 1 2\nB 1 C 1\n")
        with pytest.raises(ValueError, match=r"pairs.txt:2: person name .* is not a plain folder name"):
            read_pairs(path)


def test_byte_order_mark_is_accepted_and_non_utf8_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pairs.txt"
    path.write_bytes("1 1\nA 1 2\nB 1 C 1\n".encode("utf-8-sig"))
    assert read_pairs(path).names.tolist() == [["A/A_0001.jpg", "A/A_0002.jpg"], ["B/B_0001.jpg", "C/C_0001.jpg"]]
    path.write_bytes(b"1 1\nA\xff 1 2\nB 1 C 1\n")
    with pytest.raises(ValueError, match=r"pairs.txt is not a UTF-8 text pairs file"):
        read_pairs(path)
