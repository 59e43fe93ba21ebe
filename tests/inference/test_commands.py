import json
import re

import numpy as np
import pytest
from PIL import Image

from marginface.cli import main
from marginface.inference import read_card
from marginface.models.loaded import SUPPORTED as _SUPPORTED
from tests.inference.helpers import save_tiny


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = save_tiny(root / "m.safetensors", flip=False)
    rng = np.random.default_rng(0)
    for ident in range(3):
        base = rng.integers(0, 256, (112, 112, 3))
        for j in range(2):
            (root / "people" / f"p{ident}").mkdir(parents=True, exist_ok=True)
            noisy = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(root / "people" / f"p{ident}" / f"{j}.png")
    return root, model


def test_info_and_verify(setup, capsys):
    root, model = setup
    assert main(["info", str(model)]) == 0
    assert "mobilefacenet" in capsys.readouterr().out
    assert main(["info", str(model), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backbone"] == "mobilefacenet"
    a, b = root / "people/p0/0.png", root / "people/p1/0.png"
    assert main(["verify", str(a), str(b), "--model", str(model)]) == 2
    assert "no calibrated threshold" in capsys.readouterr().err
    assert main(["verify", str(a), str(b), "--model", str(model), "--threshold", "0.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["same"] == (out["score"] >= 0.5) and out["faces"][0]["aligned_input"]
    assert main(["verify", str(a), str(a), "--model", str(model), "--threshold", "0.5"]) == 0
    assert capsys.readouterr().out.startswith("same person: cosine 1.0000")


@pytest.mark.slow
def test_calibrate_enroll_identify(setup, tmp_path, capsys):
    root, model = setup
    copy = tmp_path / "m.safetensors"
    copy.write_bytes(model.read_bytes())
    assert main(["calibrate", str(copy), "--folder", str(root / "people"), "--far", "1e-3"]) == 2
    assert "cannot be measured on 12 impostor pairs" in capsys.readouterr().err
    assert main(["calibrate", str(copy), "--folder", str(root / "people"), "--far", "0.1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["impostors"] == 12 and read_card(copy).threshold == result["threshold"]
    gallery = tmp_path / "g"
    assert main(["enroll", str(root / "people"), "--gallery", str(gallery), "--model", str(copy)]) == 0
    assert "gallery" in capsys.readouterr().out
    probe = root / "people/p2/1.png"
    assert main(["identify", str(probe), "--gallery", str(gallery), "-k", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    from marginface.inference import FaceRecognizer, Gallery

    loaded = Gallery.load(gallery)
    cos = loaded.vectors.astype(np.float64) @ FaceRecognizer.load(copy).embed(probe)[0].astype(np.float64)
    best = np.argsort(-cos)[:2]
    assert loaded.names[best[0]] == "p2"
    assert [m["name"] for m in out["results"][0]["matches"]] == [loaded.names[i] for i in best]
    assert out["results"][0]["matches"][0]["score"] == pytest.approx(cos[best[0]], abs=1e-5)
    assert len(loaded) == 3 and loaded.images("p2") == 2
    assert main(["enroll", str(root / "people"), "--gallery", str(gallery), "--model", str(copy)]) == 0
    assert "enrolled 0 images of 3 identities" in (out := capsys.readouterr().out)
    assert "6 images were already enrolled (same file bytes) and were skipped" in out
    assert Gallery.load(gallery).images("p2") == 2  # not doubled
    assert main(["identify", str(probe), "--gallery", str(gallery), "--model", str(root / "m.safetensors")]) == 0
    other = save_tiny(tmp_path / "other.safetensors", seed=5)
    assert main(["identify", str(probe), "--gallery", str(gallery), "--model", str(other)]) == 2
    assert "not comparable" in capsys.readouterr().err


def test_export_argument_errors(setup, tmp_path, capsys):
    _, model = setup
    assert main(["export", str(model), "--onnx", str(tmp_path / "x.onnx"), "--int8"]) == 2
    assert "--calibration-images" in capsys.readouterr().err
    (tmp_path / "bad.safetensors").write_bytes(b"not a model")
    assert main(["info", str(tmp_path / "bad.safetensors")]) == 2
    assert "not a readable safetensors model" in capsys.readouterr().err


def test_identify_marks_one_match_and_escapes_names():
    from marginface.cli.inference import _best_match, _flag, _printable
    from marginface.inference.gallery import Match

    matches = [Match("ann", 0.9), Match("bob", 0.8), Match("cy", 0.1)]
    assert [_flag(r, m.score, 0.5) for r, m in enumerate(matches, 1)] == [
        "  (match)", "  (also above threshold)", "  (below threshold)"]
    assert _best_match(matches, 0.5) == "ann" and _best_match(matches, 0.95) is None
    assert _best_match(matches, None) is None and _flag(1, 0.9, None) == ""
    assert _printable("Zoë Saldaña") == "Zoë Saldaña"
    assert _printable("evil\n  1. admin  cosine 1.0000\x1b[2J") == "'evil\\n  1. admin  cosine 1.0000\\x1b[2J'"


def _first_error_line(capsys) -> str:
    return capsys.readouterr().err.splitlines()[0]


def test_verify_checks_its_inputs_before_the_threshold(setup, tmp_path, capsys):
    """The model has no threshold: each input mistake is still what verify reports (it was hidden behind it)."""
    root, model = setup
    good = root / "people/p0/0.png"
    (tmp_path / "notes.jpg").write_text("not an image")
    verify = ["verify", "--model", str(model)]
    assert main([*verify, str(tmp_path / "missing.jpg"), str(good)]) == 2
    assert _first_error_line(capsys) == f"marginface verify: image {tmp_path / 'missing.jpg'} does not exist"
    assert main([*verify, str(good), str(root / "people")]) == 2
    assert _first_error_line(capsys) == f"marginface verify: {root / 'people'} is a folder, expected an image file"
    assert main([*verify, str(tmp_path / "notes.jpg"), str(good)]) == 2
    assert _first_error_line(capsys).startswith(f"marginface verify: cannot read image {tmp_path / 'notes.jpg'}: ")
    assert main([*verify, str(good), str(good)]) == 2  # inputs fine: now the threshold is what is missing
    assert _first_error_line(capsys) == (
        f"marginface verify: the model {model} has no calibrated threshold: run marginface calibrate {model} "
        "--pairs ... --far 1e-3 first, or pass a threshold (verify --threshold T)")


def test_verify_a_photo_without_a_face_before_the_threshold(setup, tmp_path, capsys):
    root, model = setup
    try:
        from marginface.align.detectors import create_detector

        create_detector("mtcnn")
    except ImportError as err:
        pytest.skip(f"the align extra is not installed: {err}")
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(tmp_path / "wall.png")
    assert main(["verify", str(tmp_path / "wall.png"), str(root / "people/p0/0.png"), "--model", str(model)]) == 2
    assert _first_error_line(capsys).startswith(f"marginface verify: no face found in {tmp_path / 'wall.png'} ")


def test_paths_of_the_wrong_kind_are_named(setup, tmp_path, capsys):
    root, model = setup
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.safetensors").write_bytes(model.read_bytes())
    assert main(["info", str(run)]) == 2
    assert _first_error_line(capsys) == (
        f"marginface info: {run} is a folder, expected a model file ({_SUPPORTED}); this looks like a run folder: "
        f"its model is {run / 'best.safetensors'}")
    assert main(["calibrate", str(model), "--pairs", str(root / "people"), "--no-write"]) == 2
    assert _first_error_line(capsys) == (
        f"marginface calibrate: --pairs {root / 'people'} is a folder, expected a .bin or pairs.txt file "
        "(labelled photos DIR/<identity>/<images> go to --folder)")
    photo = root / "people/p0/0.png"
    assert main(["enroll", str(photo), "--gallery", str(tmp_path / "g"), "--model", str(model)]) == 2
    assert _first_error_line(capsys) == (
        f"marginface enroll: {photo} is a file, expected a folder of photos {photo}/<identity>/<image>")
    out = tmp_path / "exists"
    out.mkdir()
    assert main(["export", str(model), "--onnx", str(out)]) == 2
    assert _first_error_line(capsys) == (
        f"marginface export: --onnx {out} is a folder, expected an .onnx file path (e.g. {out / 'model.onnx'})")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists", "run"]  # nothing written, no .tmp


def test_scores_print_enough_digits_to_tell_them_from_the_threshold(setup, capsys):
    from marginface.cli.inference import score_versus_threshold

    assert score_versus_threshold(0.73451234, 0.612) == "cosine 0.734512 >= threshold 0.612000"
    # a collapsed model: 4 decimals printed "cosine 1.0000 < threshold 1.0000"
    assert score_versus_threshold(0.99999991, 0.99999997) == (
        "cosine 1.000000 < threshold 1.000000 (cosine - threshold = -6e-08)")
    root, model = setup
    a = root / "people/p0/0.png"
    assert main(["verify", str(a), str(root / "people/p0/1.png"), "--model", str(model), "--threshold", "0.25"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    score = float(line.split("cosine ")[1].split()[0])
    assert re.fullmatch(r"(same person|different people): cosine -?\d\.\d{6} (>=|<) threshold 0\.250000", line)
    assert (score >= 0.25) == line.startswith("same person")


def test_an_enroll_error_starts_a_line_of_its_own(setup, tmp_path, capsys):
    root, model = setup
    (tmp_path / "people/a").mkdir(parents=True)
    (tmp_path / "people/b").mkdir(parents=True)
    (tmp_path / "people/a/0.png").write_bytes((root / "people/p0/0.png").read_bytes())
    (tmp_path / "people/b/0.png").write_text("not an image")
    assert main(["enroll", str(tmp_path / "people"), "--gallery", str(tmp_path / "g"), "--model", str(model)]) == 2
    lines = capsys.readouterr().err.split("\n")  # not splitlines(): the bar's "\r" redraws stay on one line
    errors = [line for line in lines if "marginface enroll:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"marginface enroll: cannot read image {tmp_path}/people/b/0.png")
