import json
import os
import stat

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
    with pytest.raises(UserError, match="`images=DIR`"):
        pairs_file_pairs(rec, tmp_path / "pairs.txt")
    result = calibrate_model(model, far=1 / 3, pairs=str(tmp_path / "p.bin"))
    assert result.impostors == 3 and result.tar == 1.0


@pytest.mark.parametrize("impostors, far", [(1, 1.0), (10, 0.1), (11, 0.1), (300, 0.01), (999, 0.01),
                                            (1000, 0.001), (3000, 0.001), (10_000, 1e-4)])
def test_measurable_far_is_the_smallest_power_of_ten_the_pairs_can_measure(impostors, far):
    from marginface.inference.calibrate import measurable_far

    assert measurable_far(impostors) == pytest.approx(far, rel=1e-12)
    assert measurable_far(impostors) * impostors >= 1 - 1e-9  # measurable
    assert measurable_far(impostors) / 10 * impostors < 1  # the next power of ten is not


@pytest.mark.slow
def test_training_writes_a_threshold_calibrated_on_its_validation_pairs(tmp_path, capsys):
    """best.safetensors carries a threshold at the FAR its validation pairs can measure, so verify works at once."""
    import torch

    from marginface.cli import main
    from marginface.inference import FaceRecognizer
    from marginface.training.config import load_config
    from marginface.training.trainer import Trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = load_config(None, [
            "model.backbone=mobilefacenet", "model.embedding_size=16", "data.synthetic_identities=4",
            "data.synthetic_images_per_identity=4", "batch_size=8", "steps=2", "log_every=1", "device=cpu",
            "checkpoint_every=2", "optim.lr=0.01", "validation.synthetic_pairs=40",
            "validation.synthetic_identities=6", f"output_dir={tmp_path}"])
        trainer = Trainer(config).setup()
        trainer.fit()
        _, images, issame = trainer.validation_sets[0]
        card = read_card(tmp_path / "best.safetensors")
        # independent reference: the pairs embedded by the inference pipeline from 0..255 pixels, naive threshold
        pixels = torch.round(images * 127.5 + 127.5)
        emb = FaceRecognizer.load(tmp_path / "best.safetensors").embed(pixels).astype(np.float64)
    finally:
        torch.set_num_threads(threads)
    scores = np.sum(emb[0::2] * emb[1::2], axis=1)
    impostors = int((~np.asarray(issame, bool)).sum())
    far = 10.0 ** np.ceil(np.log10(1 / impostors) - 1e-9)
    threshold, tar, _ = _naive(scores, issame, far)
    t = card.thresholds
    assert t["far"] == pytest.approx(far) and t["impostors"] == impostors and t["genuine"] == 40 - impostors
    assert card.threshold == pytest.approx(threshold, abs=1e-5) and t["tar"] == pytest.approx(tar)
    assert t["far_choice"].startswith(f"the smallest power of ten measurable on {impostors} impostor pairs (the "
                                      f"lowest measurable FAR is 1/{impostors} = ")
    assert t["data"] == "validation set synthetic_heldout at step 2"
    # model files get the mode the umask asks for (safetensors alone writes 0600)
    mask = os.umask(0)
    os.umask(mask)
    for path in [tmp_path / "best.safetensors", *(tmp_path / "checkpoints").glob("step_*/*.safetensors")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for path, face in ((a, pixels[0]), (b, pixels[1])):
        Image.fromarray(face.permute(1, 2, 0).numpy().astype(np.uint8)).save(path)
    capsys.readouterr()
    assert main(["verify", str(a), str(b), "--model", str(tmp_path / "best.safetensors")]) == 0
    expected = "same person" if scores[0] >= card.threshold else "different people"
    assert capsys.readouterr().out.startswith(f"{expected}: cosine {scores[0]:.6f} ")


def test_calibrate_bin_embeds_each_distinct_image_once_and_refuses_an_unmeasurable_far_first(
        tmp_path, monkeypatch, capsys):
    """LFW's .bin stores 12,000 images of 7,701 distinct ones; an unmeasurable FAR was refused after embedding."""
    from marginface.cli import main
    from marginface.data.bins import load_verification_bin, write_verification_bin
    from marginface.inference.model import LoadedModel
    from marginface.inference.recognizer import FaceRecognizer

    files = _identity_faces(tmp_path)
    order = [((0, 1), (0, 2)), ((1, 1), (1, 3)), ((0, 1), (1, 1)), ((0, 2), (2, 1)), ((1, 1), (2, 2)),
             ((2, 2), (2, 3))]
    encoded = [files[key].read_bytes() for pair in order for key in pair]
    write_verification_bin(tmp_path / "p.bin", encoded, [True, True, False, False, False, True])
    distinct = len({files[key] for pair in order for key in pair})
    assert (len(encoded), distinct) == (12, 7)
    model = save_tiny(tmp_path / "m.safetensors", flip=False)
    # reference: every stored image embedded on its own (no deduplication), scores in float64
    faces, issame = load_verification_bin(tmp_path / "p.bin")
    emb = FaceRecognizer.load(model).embed(faces * 127.5 + 127.5).astype(np.float64)
    reference = np.sum(emb[0::2] * emb[1::2], axis=1)
    capsys.readouterr()  # the reference's own decoding bar
    rows = []
    embed_pixels = LoadedModel.embed_pixels
    monkeypatch.setattr(LoadedModel, "embed_pixels", lambda self, pixels, flip=None: (
        rows.append(len(pixels)), embed_pixels(self, pixels, flip))[1])
    assert main(["calibrate", str(model), "--pairs", str(tmp_path / "p.bin"), "--far", "0.01", "--no-write"]) == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        "marginface calibrate: FAR 0.01 cannot be measured on 3 impostor pairs (the smallest measurable FAR is "
        "1/3 = 0.333): use at least 100 impostor pairs (a bigger folder or pairs file) or a larger --far")
    assert rows == []  # refused before a single image was embedded
    assert main(["calibrate", str(model), "--pairs", str(tmp_path / "p.bin"), "--far", "0.34", "--no-write",
                 "--json"]) == 0
    captured = capsys.readouterr()
    assert sum(rows) == distinct and "embed p.bin" in captured.err  # progress bar, one forward per distinct image
    result = json.loads(captured.out)
    assert result["data"] == f"{tmp_path / 'p.bin'} (6 pairs, 7 distinct images)"
    threshold, tar, _ = _naive(reference, issame, 0.34)
    assert result["threshold"] == pytest.approx(threshold, abs=1e-6) and result["tar"] == pytest.approx(tar)


def test_scores_are_clipped_as_verify_clips_them():
    """A collapsed model: float64 dots of float32 unit vectors a few ulps above 1 gave a threshold of 1.0000001,
    which no verify() score (clipped to [-1, 1]) can reach."""
    scores = np.array([1 + 2e-7, 1 + 1e-7, 1 + 1.5e-7, 0.5])
    result = calibrate_scores(scores, np.array([True, False, True, False]), far=0.5)
    assert result.threshold == 1.0 and result.best_threshold <= 1.0
