from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from marginface.align.lfw import build_verification_bin, read_pairs
from marginface.align.pipeline import AlignOptions
from marginface.cli import main
from marginface.data.bins import read_verification_bin

from .conftest import write_image

# Grey level of each person's images: lets a test tell which source image ended up where in the .bin.
LEVELS = {"Ann_A": 60, "Bob_B": 110, "Cy_C": 160}


@pytest.fixture
def lfw_folder(tmp_path: Path) -> Path:
    root = tmp_path / "lfw"
    for name, level in LEVELS.items():
        for i in (1, 2, 3):
            write_image(root / name / f"{name}_{i:04d}.jpg", level + 5 * i)
    return root


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.txt"
    path.write_text("1 2\nAnn_A 1 2\nBob_B 1 3\nAnn_A 3 Cy_C 1\nBob_B 2 Cy_C 3\n")
    return path


def test_read_pairs(lfw_folder: Path, pairs_file: Path) -> None:
    pairs = read_pairs(pairs_file, lfw_folder)
    assert [p.issame for p in pairs] == [True, True, False, False]
    assert pairs[2].first == lfw_folder / "Ann_A" / "Ann_A_0003.jpg"
    assert pairs[2].second == lfw_folder / "Cy_C" / "Cy_C_0001.jpg"
    assert [p.line for p in pairs] == [2, 3, 4, 5]


def test_missing_image_names_the_line(lfw_folder: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad_pairs.txt"
    bad.write_text("Ann_A 1 2\nBob_B 1 9\n")
    with pytest.raises(FileNotFoundError, match=r"bad_pairs\.txt:2: 'Bob_B 1 9' names .*Bob_B_0009\.jpg"):
        read_pairs(bad, lfw_folder)
    assert main(["prepare", "lfw-bin", "--lfw", str(lfw_folder), "--pairs", str(bad), "--out",
                 str(tmp_path / "x.bin"), "--workers", "0"]) == 2
    assert "bad_pairs.txt:2" in capsys.readouterr().err


@pytest.mark.parametrize("line", ["Ann_A 1", "Ann_A one 2", "Ann_A 1 Cy_C 2 3"])
def test_malformed_line(lfw_folder: Path, tmp_path: Path, line: str) -> None:
    bad = tmp_path / "p.txt"
    bad.write_text(f"Ann_A 1 2\n{line}\n")
    with pytest.raises(ValueError, match=r"p\.txt:2"):
        read_pairs(bad, lfw_folder)


def _mean_level(encoded: bytes) -> float:
    import cv2

    image = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (112, 112, 3)
    return float(np.median(image))


def test_build_bin_round_trip(lfw_folder: Path, pairs_file: Path, tmp_path: Path, stand_in_detector: str) -> None:
    out = tmp_path / "lfw.bin"
    report = build_verification_bin(lfw_folder, pairs_file, out, AlignOptions(detector=stand_in_detector, workers=0))
    images, issame = read_verification_bin(out)
    assert len(images) == 8 and issame.tolist() == [True, True, False, False]
    expected = [LEVELS[n] + 5 * i for n, i in [("Ann_A", 1), ("Ann_A", 2), ("Bob_B", 1), ("Bob_B", 3),
                                                  ("Ann_A", 3), ("Cy_C", 1), ("Bob_B", 2), ("Cy_C", 3)]]
    assert [_mean_level(im) for im in images] == pytest.approx(expected, abs=2)
    assert report.total == 8 and report.written == 8  # unique images: all but none repeated here
    saved = json.loads((tmp_path / "lfw.align_report.json").read_text())
    assert saved["pairs"] == 4 and saved["same"] == 2


def test_build_bin_from_aligned_folder(tmp_path: Path, pairs_file: Path, capsys) -> None:
    aligned = tmp_path / "aligned"
    for name, level in LEVELS.items():
        for i in (1, 2, 3):
            write_image(aligned / name / f"{name}_{i:04d}.jpg", level + 5 * i, size=(112, 112))
    out = tmp_path / "a.bin"
    assert main(["prepare", "lfw-bin", "--lfw", str(aligned), "--pairs", str(pairs_file), "--out", str(out),
                 "--aligned"]) == 0
    images, _ = read_verification_bin(out)
    assert images[0] == (aligned / "Ann_A" / "Ann_A_0001.jpg").read_bytes()
    write_image(aligned / "Cy_C" / "Cy_C_0001.jpg", 10, size=(100, 100))
    assert main(["prepare", "lfw-bin", "--lfw", str(aligned), "--pairs", str(pairs_file), "--out", str(out),
                 "--aligned"]) == 2
    assert "Cy_C_0001.jpg is 100x100" in capsys.readouterr().err
