import numpy as np
import pytest
from PIL import Image

from marginface.errors import UserError
from marginface.inference import read_card
from marginface.inference.calibrate import calibrate_model, calibrate_scores
from tests.inference.helpers import save_tiny


def _naive(scores, issame, far):
    """float64 loops: lowest threshold (a score value) with FAR <= far; best-accuracy cut."""
    scores = [float(s) for s in scores]
    imp = [s for s, y in zip(scores, issame) if not y]
    gen = [s for s, y in zip(scores, issame) if y]
    best = None
    for t in sorted(set(scores)):
        fa = sum(1 for s in imp if s >= t)
        if fa <= far * len(imp) + 1e-9:
            best = t
            break
    tar = sum(1 for s in gen if s >= best) / len(gen)
    accs = []
    for t in sorted(set(scores)) + [np.inf]:
        correct = sum(1 for s in gen if s >= t) + sum(1 for s in imp if s < t)
        accs.append(correct / len(scores))
    return best, tar, max(accs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibration_matches_naive_float64(seed):
    rng = np.random.default_rng(seed)
    n_gen, n_imp = 150, 1000
    scores = np.concatenate([rng.normal(0.6, 0.15, n_gen), rng.normal(0.1, 0.12, n_imp)])
    scores[rng.integers(0, len(scores), 30)] = 0.3  # ties
    issame = np.arange(len(scores)) < n_gen
    for far in (1e-1, 1e-2, 2e-3):
        result = calibrate_scores(scores, issame, far)
        threshold, tar, acc = _naive(scores, issame, far)
        assert result.threshold == pytest.approx(threshold, abs=0)
        assert result.tar == pytest.approx(tar) and result.achieved_far <= far
        assert result.impostors == n_imp and result.genuine == n_gen
        assert result.best_accuracy == pytest.approx(acc)
        same = scores >= result.best_threshold
        assert np.mean(same == issame) == pytest.approx(acc)


def test_far_below_resolution_is_refused():
    scores, issame = np.linspace(0, 1, 600), np.arange(600) < 100
    with pytest.raises(UserError, match=r"FAR 0.001 cannot be measured on 500 impostor pairs.*1000"):
        calibrate_scores(scores, issame, 1e-3)
    assert calibrate_scores(scores, issame, 2e-3).impostors == 500
    with pytest.raises(UserError, match="both genuine and impostor"):
        calibrate_scores(scores, np.ones(600, bool), 0.1)


@pytest.mark.slow
def test_calibrate_folder_writes_card_atomically(tmp_path):
    model = save_tiny(tmp_path / "m.safetensors", flip=False)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (4, 112, 112, 3))
    for ident in range(4):  # aligned 112x112 faces: noisy copies of one picture per identity
        (tmp_path / "faces" / f"id{ident}").mkdir(parents=True)
        for j in range(3):
            noisy = np.clip(base[ident] + rng.normal(0, 20, base[ident].shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(tmp_path / "faces" / f"id{ident}" / f"{j}.png")
    before = model.stat().st_ino
    result = calibrate_model(model, far=0.02, folder=str(tmp_path / "faces"))
    assert result.genuine == 4 * 3 and result.impostors == 66 - 12
    card = read_card(model)
    assert card.threshold == result.threshold and card.thresholds["impostors"] == 54
    assert model.stat().st_ino != before  # replaced by rename, not rewritten in place
    assert not list(tmp_path.glob("*.tmp"))
    from marginface.inference.recognizer import FaceRecognizer

    rec = FaceRecognizer.load(model)
    files = sorted((tmp_path / "faces").rglob("*.png"))
    check = rec.verify(files[0], files[5])
    assert check.threshold == result.threshold and check.same == (check.score >= result.threshold)
    assert rec.verify(files[0], files[0]).same and result.tar > 0.5  # the tiny model separates these faces


def _identity_faces(tmp_path, people=3, per=3):
    rng = np.random.default_rng(3)
    files = {}
    for p in range(people):
        base = rng.integers(0, 256, (112, 112, 3))
        for j in range(1, per + 1):
            folder = tmp_path / "lfw" / f"P{p}"
            folder.mkdir(parents=True, exist_ok=True)
            noisy = np.clip(base + rng.normal(0, 15, base.shape), 0, 255).astype(np.uint8)
            files[(p, j)] = folder / f"P{p}_{j:04d}.jpg"
            Image.fromarray(noisy).save(files[(p, j)], quality=95)
    return files


@pytest.mark.slow
def test_calibrate_from_pairs_txt_and_bin_agree(tmp_path):
    from marginface.data.bins import write_verification_bin

    files = _identity_faces(tmp_path)
    same = [(0, 1, 0, 2), (1, 1, 1, 3), (2, 2, 2, 3)]
    diff = [(0, 1, 1, 1), (0, 2, 2, 1), (1, 2, 2, 2)]
    lines = ["1 3"] + [f"P{a} {i} {j}" for a, i, _, j in same] + [f"P{a} {i} P{b} {j}" for a, i, b, j in diff]
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    order = [(a, i, a, j) for a, i, _, j in same] + diff
    encoded = []
    for a, i, b, j in order:
        encoded += [files[(a, i)].read_bytes(), files[(b, j)].read_bytes()]
    write_verification_bin(tmp_path / "p.bin", encoded, [True] * 3 + [False] * 3)
    model = save_tiny(tmp_path / "m.safetensors", flip=False)
    from marginface.inference.calibrate import pairs_file_pairs
    from marginface.inference.recognizer import FaceRecognizer

    rec = FaceRecognizer.load(model)
    s_txt, y_txt, _ = pairs_file_pairs(rec, tmp_path / "pairs.txt", tmp_path / "lfw")
    s_bin, y_bin, _ = pairs_file_pairs(rec, tmp_path / "p.bin")
    np.testing.assert_array_equal(y_txt, y_bin)
    np.testing.assert_allclose(s_txt, s_bin, atol=2e-3)  # .bin faces are decoded by another JPEG decoder
    assert s_txt[:3].min() > s_txt[3:].max()  # the tiny model separates noisy copies from other "people"
    with pytest.raises(UserError, match="--images"):
        pairs_file_pairs(rec, tmp_path / "pairs.txt")
    result = calibrate_model(model, far=1 / 3, pairs=str(tmp_path / "p.bin"))
    assert result.impostors == 3 and result.tar == 1.0
