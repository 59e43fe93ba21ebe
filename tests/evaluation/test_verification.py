"""Verification protocols: .bin, pairs.txt + folder, embeddings files; table and ROC plot."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import save_file
from torch import nn

from marginface.evaluation import metrics, verification
from marginface.evaluation.embed import center_crop_resize, load_image
from marginface.evaluation.pairs import read_pairs

PEOPLE = {"Ann": 3, "Bob": 3, "Cy": 2}
PAIRS = "2 2\nAnn 1 2\nBob 1 3\nAnn 1 Bob 2\nCy 1 Bob 1\nCy 1 2\nAnn 2 3\nBob 3 Cy 2\nAnn 3 Cy 1\n"


class MeanColour(nn.Module):
    """(B, 3, H, W) -> (B, 4): the mean colour plus a constant; identities differ by colour below."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(2, 3))
        return torch.cat([m, torch.full_like(m[:, :1], 0.1)], dim=1)


@pytest.fixture
def lfw_tree(tmp_path: Path) -> Path:
    """A tiny LFW-style tree: each person has a base colour, each image some noise."""
    rng = np.random.default_rng(0)
    base = {"Ann": (200, 40, 40), "Bob": (40, 200, 40), "Cy": (40, 40, 200)}
    for person, n in PEOPLE.items():
        (tmp_path / "img" / person).mkdir(parents=True)
        for i in range(1, n + 1):
            pixels = np.clip(np.array(base[person]) + rng.normal(0, 30, (60, 60, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "img" / person / f"{person}_{i:04d}.jpg")
    (tmp_path / "pairs.txt").write_text(PAIRS)
    return tmp_path


def test_evaluate_pairs_end_to_end(lfw_tree: Path) -> None:
    model = MeanColour()
    result = verification.evaluate_pairs(model, lfw_tree / "pairs.txt", lfw_tree / "img", batch_size=3,
                                         preprocess=center_crop_resize)
    # independent path: load each image, embed image + mirror by hand, cosine per pair
    pairs = read_pairs(lfw_tree / "pairs.txt")
    scores = []
    for a, b in pairs.names:
        e = []
        for name in (a, b):
            x = load_image(lfw_tree / "img" / name, center_crop_resize)[None].double()
            v = (model(x) + model(x.flip(3)))[0].numpy()
            e.append(v / np.linalg.norm(v))
        scores.append(float(e[0] @ e[1]))
    expected = metrics.kfold_accuracy(np.array(scores), pairs.issame, pairs.folds)
    assert result.accuracy.fold_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    np.testing.assert_allclose(result.accuracy.accuracies, expected.accuracies)
    assert result.accuracy.mean == 1.0  # colours separate the identities
    assert result.auc == 1.0 and result.name == "pairs"


def test_missing_image_fails_before_embedding(lfw_tree: Path) -> None:
    (lfw_tree / "img" / "Cy" / "Cy_0002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="pairs line 6 names Cy/Cy_0002.jpg"):
        verification.evaluate_pairs(MeanColour(), lfw_tree / "pairs.txt", lfw_tree / "img")


def embeddings_for_tree() -> tuple[list[str], np.ndarray]:
    names = [f"{p}/{p}_{i:04d}.jpg" for p, n in PEOPLE.items() for i in range(1, n + 1)]
    rng = np.random.default_rng(1)
    return names, rng.normal(size=(len(names), 5)).astype(np.float32)


def expected_scores(pairs_path: Path, names: list[str], emb: np.ndarray, metric: str) -> np.ndarray:
    row = {n: i for i, n in enumerate(names)}
    out = []
    for a, b in read_pairs(pairs_path).names:
        x, y = emb[row[a]].astype(np.float64), emb[row[b]].astype(np.float64)
        out.append(x @ y / math.sqrt((x @ x) * (y @ y)) if metric == "cosine" else -math.sqrt(((x - y) ** 2).sum()))
    return np.array(out)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_embeddings_file_roundtrip(lfw_tree: Path, metric: str, fmt: str) -> None:
    names, emb = embeddings_for_tree()
    path = lfw_tree / f"emb.{fmt}"
    if fmt == "npz":
        np.savez(path, names=np.array(names, dtype=str), embeddings=emb)
    else:
        save_file({n: emb[i] for i, n in enumerate(names)}, str(path))
    result = verification.evaluate_embeddings_file(path, lfw_tree / "pairs.txt", metric=metric)
    scores = expected_scores(lfw_tree / "pairs.txt", names, emb, metric)
    pairs = read_pairs(lfw_tree / "pairs.txt")
    expected = metrics.kfold_accuracy(scores, pairs.issame, pairs.folds)
    np.testing.assert_allclose(result.accuracy.thresholds, expected.thresholds, rtol=1e-6)
    assert result.auc == pytest.approx(metrics.auc(scores, pairs.issame))


def test_embeddings_file_errors(lfw_tree: Path) -> None:
    names, emb = embeddings_for_tree()
    pairs = lfw_tree / "pairs.txt"
    np.savez(lfw_tree / "obj.npz", names=np.array(names, dtype=object), embeddings=emb)
    with pytest.raises(ValueError, match="pickled object arrays are refused"):
        verification.evaluate_embeddings_file(lfw_tree / "obj.npz", pairs)
    np.savez(lfw_tree / "short.npz", names=np.array(names[:-1], dtype=str), embeddings=emb[:-1])
    with pytest.raises(ValueError, match="pairs line 6 names Cy/Cy_0002.jpg, which has no embedding"):
        verification.evaluate_embeddings_file(lfw_tree / "short.npz", pairs)
    np.savez(lfw_tree / "nokey.npz", embeddings=emb)
    with pytest.raises(ValueError, match=r"lacks \['names'\]"):
        verification.evaluate_embeddings_file(lfw_tree / "nokey.npz", pairs)
    bad = emb.copy()
    bad[2, 0] = np.nan
    np.savez(lfw_tree / "nan.npz", names=np.array(names, dtype=str), embeddings=bad)
    with pytest.raises(ValueError, match="NaN"):
        verification.evaluate_embeddings_file(lfw_tree / "nan.npz", pairs)
    with pytest.raises(ValueError, match=".npz"):
        verification.load_embeddings_file(pairs)


def test_evaluate_interleaved_and_bin(tmp_path: Path) -> None:
    bins = pytest.importorskip("marginface.data.bins")
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (20, 3))
    issame = np.array([True, False] * 10)
    images = []
    for i, same in enumerate(issame):
        a = colours[i]
        b = a if same else colours[(i + 7) % 20]
        for c in (a, b):
            pixels = np.clip(c + rng.normal(0, 3, (112, 112, 3)), 0, 255).astype(np.uint8)
            buf = __import__("io").BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            images.append(buf.getvalue())
    path = bins.write_verification_bin(tmp_path / "toy.bin", images, issame)
    result = verification.evaluate_bin(MeanColour(), path)
    loaded, _ = bins.load_verification_bin(path)
    emb = MeanColour()(loaded).numpy()
    scores = metrics.pair_scores(emb[0::2], emb[1::2])
    expected = metrics.kfold_accuracy(scores, issame, 10)
    assert result.name == "toy" and result.num_pairs == 20
    np.testing.assert_allclose(result.accuracy.accuracies, expected.accuracies)
    with pytest.raises(ValueError, match=r"\(2N, D\)"):
        verification.evaluate_interleaved(emb[:-1], issame)


def test_real_small_bin_is_refused_before_embedding(shared_data: Path) -> None:
    """The shared small_lfw.bin holds 10 same pairs only: it used to score '100.00 ± 0.00'; now it is refused."""
    pytest.importorskip("marginface.data.bins")

    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise AssertionError("embedded a set that should have been refused first")

    with pytest.raises(ValueError, match="small_lfw: all 10 pairs are same pairs"):
        verification.evaluate_bin(Boom(), shared_data / "bins" / "small_lfw.bin")


def test_table_and_plot(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([True, False], 300)
    s = rng.normal(size=600) + y
    result = verification.evaluate_scores(s, y, 10, name="toy")
    table = verification.format_table([result])
    assert "toy" in table and f"{100 * result.accuracy.mean:.2f} ± {100 * result.accuracy.std:.2f}" in table
    assert "n/a" in table.splitlines()[2]  # FAR 1e-4 and 1e-6 are below 1/300
    png = verification.plot_roc([result], tmp_path / "roc.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _png(pixels: np.ndarray) -> bytes:
    buf = __import__("io").BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_evaluate_bins_embeds_each_distinct_image_once(tmp_path: Path) -> None:
    """Two sets sharing images (as CFP-FF and CFP-FP share their frontal ones, and every set repeats images across
    pairs): each set's result equals evaluate_bin's, and the model sees each distinct image once."""
    bins = pytest.importorskip("marginface.data.bins")
    rng = np.random.default_rng(1)
    pool = [_png(np.clip(c + rng.normal(0, 3, (112, 112, 3)), 0, 255).astype(np.uint8))
            for c in rng.integers(0, 256, (12, 3))]
    issame = np.array([True, False] * 10)
    pick_a = [(i % 12, i % 12 if s else (i + 5) % 12) for i, s in enumerate(issame)]
    pick_b = [(i % 6, i % 6 if s else 6 + i % 6) for i, s in enumerate(issame)]
    path_a = bins.write_verification_bin(tmp_path / "a.bin", [pool[k] for p in pick_a for k in p], issame)
    path_b = bins.write_verification_bin(tmp_path / "b.bin", [pool[k] for p in pick_b for k in p], issame)

    class Counting(MeanColour):
        seen = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            Counting.seen += x.shape[0]
            return super().forward(x)

    model = Counting()
    together = verification.evaluate_bins(model, [path_a, path_b], flip=False)
    assert Counting.seen == 12  # 80 stored images, 12 distinct
    for result, path in zip(together, (path_a, path_b), strict=True):
        alone = verification.evaluate_bin(MeanColour(), path, flip=False)
        assert result.name == alone.name
        np.testing.assert_array_equal(result.accuracy.accuracies, alone.accuracy.accuracies)
        np.testing.assert_array_equal(result.accuracy.thresholds, alone.accuracy.thresholds)
        assert result.auc == alone.auc
