"""CFP: protocol order = official splits, fiducial files, and the 30 -> 5 point map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from marginface.align import cfp


def _write_layout(root: Path) -> None:
    """A tiny official-layout CFP: 3 people x (2 frontal + 1 profile), 1 same + 1 diff pair per split."""
    proto = root / "Protocol"
    (proto / "Pair_list_F.txt").parent.mkdir(parents=True)
    frontal = [f"{k + 1} ../Data/Images/{p:03d}/frontal/{i:02d}.jpg" for k, (p, i) in
               enumerate((p, i) for p in (1, 2, 3) for i in (1, 2))]
    profile = [f"{p} ../Data/Images/{p:03d}/profile/01.jpg" for p in (1, 2, 3)]
    (proto / "Pair_list_F.txt").write_text("\n".join(frontal) + "\n")
    (proto / "Pair_list_P.txt").write_text("\n".join(profile) + "\n")
    for name in ("FF", "FP"):
        for split in range(1, 11):
            folder = proto / "Split" / name / f"{split:02d}"
            folder.mkdir(parents=True)
            person = split % 3
            (folder / "same.txt").write_text(f"{2 * person + 1},{2 * person + 2 if name == 'FF' else person + 1}\n")
            (folder / "diff.txt").write_text(f"{2 * person + 1},{(person + 1) % 3 + 1}\n")


def test_read_protocol_keeps_splits_as_contiguous_folds(tmp_path: Path) -> None:
    _write_layout(tmp_path)
    fp = cfp.read_protocol(tmp_path, "FP")
    assert fp.folds.tolist() == [s for s in range(10) for _ in range(2)]
    assert fp.issame.tolist() == [True, False] * 10
    first, second = fp.images[fp.pairs[0, 0]], fp.images[fp.pairs[0, 1]]
    assert (first.parent.name, second.parent.name) == ("frontal", "profile")
    assert first.parents[1].name == second.parents[1].name == "002"  # split 01: person index 1 -> 002
    ff = cfp.read_protocol(tmp_path, "FF")
    assert all(cfp.view_of(p) == "frontal" for p in ff.images)
    with pytest.raises(ValueError, match="'FP' or 'FF'"):
        cfp.read_protocol(tmp_path, "PP")


def test_read_protocol_names_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Pair_list_F.txt"):
        cfp.read_protocol(tmp_path, "FF")


def test_fiducials_path_and_reader(tmp_path: Path) -> None:
    image = tmp_path / "Data" / "Images" / "007" / "profile" / "03.jpg"
    path = cfp.fiducials_path(image)
    assert path == tmp_path / "Data" / "Fiducials" / "007" / "profile" / "03.txt"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join("1.5,2.5" for _ in range(29)))
    with pytest.raises(ValueError, match="30 finite"):
        cfp.read_fiducials(path)


def _faces(rng: np.random.Generator, count: int, mirror: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Random similarity-moved shapes whose five points are a fixed linear function of the 30 (known truth)."""
    base = rng.uniform(0, 60, size=(30, 2))
    base[18:25, 0] += 60  # nose right of the jaw: the canonical direction
    mix = rng.dirichlet(np.ones(30), size=5)  # each ArcFace point = a convex mix of fiducials
    fids, five = [], []
    for k in range(count):
        shape = base + rng.normal(0, 3, size=base.shape)
        points = mix @ shape
        angle, scale, shift = rng.uniform(-0.3, 0.3), rng.uniform(0.5, 2), rng.uniform(-50, 50, 2)
        rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        shape, points = shape @ rot.T + shift, points @ rot.T + shift
        if mirror[k]:
            shape, points = shape * [-1, 1], (points * [-1, 1])[[1, 0, 2, 4, 3]]
        fids.append(shape)
        five.append(points)
    return np.array(fids), np.array(five)


def test_fiducial_map_recovers_a_linear_map_under_similarity_and_mirroring() -> None:
    rng = np.random.default_rng(0)
    mirror = rng.random(400) < 0.5
    fids, five = _faces(rng, 400, mirror)
    model = cfp.fit_fiducial_map(fids[:300], five[:300], ridge=1e-9)
    predicted = np.array([model.predict(f) for f in fids[300:]])
    errors = cfp.landmark_errors(predicted, five[300:])
    assert errors["mean_iod"] < 0.05, errors  # the truth is linear up to the similarity normalisation
    baseline = cfp.landmark_errors(np.repeat(five[:300].mean(0, keepdims=True), 100, 0), five[300:])
    assert errors["mean_px"] < 0.1 * baseline["mean_px"]


def test_landmark_errors_against_a_loop() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(7, 5, 2)), rng.normal(size=(7, 5, 2))
    expected = np.mean([np.mean([np.hypot(*(a[i, j] - b[i, j])) for j in range(5)]) for i in range(7)])
    iod = np.mean([np.mean([np.hypot(*(a[i, j] - b[i, j])) for j in range(5)]) / np.hypot(*(b[i, 0] - b[i, 1]))
                   for i in range(7)])
    errors = cfp.landmark_errors(a, b)
    assert errors["mean_px"] == pytest.approx(expected)
    assert errors["mean_iod"] == pytest.approx(iod)


def test_fit_needs_enough_faces() -> None:
    with pytest.raises(ValueError, match=">= 20 faces"):
        cfp.fit_fiducial_map(np.zeros((5, 30, 2)), np.zeros((5, 5, 2)))


def test_cli_prepare_cfp_names_missing_protocol(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from marginface.cli import main

    assert main(["prepare", "cfp", "--cfp", str(tmp_path), "--protocol", "FP", "--out", str(tmp_path / "x.bin")]) == 2
    assert "marginface prepare cfp:" in capsys.readouterr().err
