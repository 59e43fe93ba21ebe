"""benchmarks/real_models.py identify --distractors: which rows become distractors (synthetic .npz files)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_real_models", ROOT / "benchmarks" / "real_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _npz(path: Path, names: list[str], emb: np.ndarray) -> str:
    np.savez(path, names=np.array(names), embeddings=emb.astype(np.float32))
    return str(path)


def test_one_image_per_identity_first_by_name_minus_excluded_and_lfw_names(bench, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    celeba = rng.normal(size=(5, 4))
    # rows deliberately out of name order: identity 07201's first image by name is row 2 (000001.jpg)
    a = _npz(tmp_path / "celeba.npz", ["07201/000009.jpg", "07202/000005.jpg", "07201/000001.jpg",
                                       "07203/000002.jpg", "07202/000003.jpg"], celeba)
    cfp = rng.normal(size=(4, 4))
    names = tmp_path / "list_name.txt"
    names.write_text("George Bush\nSomeone Else\nNancy Peloci\n")
    b = _npz(tmp_path / "cfp.npz", ["001/a.jpg", "002/a.jpg", "002/b.jpg", "003/a.jpg"], cfp)
    rows, summary = bench.load_distractors([a, f"{b}={names}"], exclude_ids={"07203"},
                                           avoid_names={"George_W_Bush", "Nancy_Pelosi"})
    expected = np.stack([celeba[2], celeba[4], cfp[1]])  # 07201, 07202 (07203 excluded); CFP 002 only
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(rows, expected, rtol=1e-6)
    assert [(s["identities"], s["excluded_ids"], s["lfw_name_matches"], s["kept"]) for s in summary] == [
        (3, 1, 0, 2), (3, 0, 2, 1)]
    assert summary[1]["matched_names"] == ["George Bush", "Nancy Peloci"]
    # exact names only: both misspelled CFP people stay in as strangers
    rows, summary = bench.load_distractors([f"{b}={names}"], avoid_names={"George_W_Bush", "Nancy_Pelosi"},
                                           similarity=1.0)
    assert summary[0]["kept"] == 3


def test_spelling_rule_keeps_different_people_apart(bench) -> None:
    keys = [bench._name_key(n) for n in ("Matthew_McConaughey", "Zhang_Ziyi", "Michael_Jordan")]
    assert bench.name_matches("Mathew Mcconaughey", keys, 0.85)
    assert bench.name_matches("Ziyi Zhang", keys, 0.85)  # same words, other order
    assert not bench.name_matches("Michael Jackson", keys, 0.85)
    assert not bench.name_matches("Mathew Mcconaughey", keys, 1.0)


def test_bad_inputs_name_the_file_and_the_fix(bench, tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, embeddings=np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="expected 'names' and 'embeddings'"):
        bench.load_distractors([str(bad)])
    ok = _npz(tmp_path / "cfp.npz", ["007/a.jpg"], np.ones((1, 4)))
    names = tmp_path / "list_name.txt"
    names.write_text("Only One\n")
    with pytest.raises(ValueError, match="no line in .*list_name.txt"):
        bench.load_distractors([f"{ok}={names}"])
    small = _npz(tmp_path / "small.npz", ["x/a.jpg"], np.ones((1, 3)))
    with pytest.raises(ValueError, match="differ in embedding size"):
        bench.load_distractors([ok, small])
