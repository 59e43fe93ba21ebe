"""One model, one set of aligned faces: the .bin, pairs + folder and --embeddings routes give the same numbers;
raw folders are refused with the fix; verification sets are checked before anything is embedded."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from marginface.cli import main
from marginface.evaluation import verification
from marginface.evaluation.embed import embed_files
from marginface.evaluation.pairs import read_pairs

PEOPLE = [f"P{i:02d}" for i in range(12)]
IMAGES_PER_PERSON = 4


class Pool(nn.Module):
    """(B, 3, 112, 112) -> (B, D): pooled colour through a linear map; a real backbone is far too slow here."""

    def __init__(self, embedding_size: int = 16) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def write_faces(root: Path, size: int, noise: float = 60.0) -> None:
    """Each person: a fixed 4x4 colour pattern; each image: that pattern plus noise (so the ROC is not perfect)."""
    rng = np.random.default_rng(0)
    for person in PEOPLE:
        pattern = rng.integers(40, 216, (4, 4, 3)).astype(np.float64)
        (root / person).mkdir(parents=True, exist_ok=True)
        for i in range(1, IMAGES_PER_PERSON + 1):
            face = np.kron(pattern + rng.normal(0, noise, (4, 4, 3)), np.ones((size // 4, size // 4, 1)))
            pixels = np.clip(face + rng.normal(0, 10, face.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / person / f"{person}_{i:04d}.jpg", quality=90)


def write_pairs(path: Path, folds: int = 10, per_class: int = 3) -> None:
    """LFW View 2 layout: each fold holds ``per_class`` same pairs then ``per_class`` different pairs."""
    rng = np.random.default_rng(1)
    lines = [f"{folds} {per_class}"]
    for _ in range(folds):
        for _ in range(per_class):
            person = PEOPLE[rng.integers(len(PEOPLE))]
            i, j = rng.choice(np.arange(1, IMAGES_PER_PERSON + 1), 2, replace=False)
            lines.append(f"{person} {i} {j}")
        for _ in range(per_class):
            a, b = rng.choice(len(PEOPLE), 2, replace=False)
            lines.append(f"{PEOPLE[a]} {rng.integers(1, 5)} {PEOPLE[b]} {rng.integers(1, 5)}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, nn.Module]:
    from marginface import backbones

    torch.manual_seed(0)
    model = Pool()
    monkeypatch.setattr(backbones, "create", lambda name, embedding_size=512, **kw: Pool(embedding_size))
    save_file({f"backbone.{k}": v for k, v in model.state_dict().items()}, tmp_path / "ckpt.safetensors")
    write_faces(tmp_path / "aligned", 112)
    write_faces(tmp_path / "raw", 248)
    write_pairs(tmp_path / "pairs.txt")
    return tmp_path, model


def _row(out: str, name: str) -> list[str]:
    """The table row of set ``name``: [set, pairs, accuracy, ±, std, threshold, AUC, ...]."""
    return next(line.split() for line in out.splitlines() if line.split()[:1] == [name])


def test_bin_pairs_folder_and_embeddings_routes_agree(setup, capsys: pytest.CaptureFixture[str]) -> None:
    root, model = setup
    ckpt = ["--checkpoint", str(root / "ckpt.safetensors"), "--backbone", "pool", "--embedding-size", "16"]
    assert main(["prepare", "lfw-bin", "--lfw", str(root / "aligned"), "--pairs", str(root / "pairs.txt"),
                 "--out", str(root / "faces.bin"), "--aligned"]) == 0
    pairs = read_pairs(root / "pairs.txt")
    names = pairs.unique_names()
    emb = embed_files(model, [root / "aligned" / n for n in names], preprocess=None)
    np.savez(root / "ext.npz", names=np.array(names, dtype=str), embeddings=emb)

    by_bin = verification.evaluate_bin(model, root / "faces.bin")
    by_folder = verification.evaluate_pairs(model, root / "pairs.txt", root / "aligned")
    by_file = verification.evaluate_embeddings_file(root / "ext.npz", root / "pairs.txt")
    assert 0.5 < by_bin.auc < 1.0, "the toy set must not be trivially separable, or the test proves nothing"
    for other in (by_folder, by_file):
        assert other.accuracy.fold_ids.tolist() == by_bin.accuracy.fold_ids.tolist()
        assert other.accuracy.accuracies.tolist() == by_bin.accuracy.accuracies.tolist()
        assert other.auc == pytest.approx(by_bin.auc, abs=1e-12)
        np.testing.assert_allclose(other.accuracy.thresholds, by_bin.accuracy.thresholds, atol=1e-6)

    # the same through the command line, folder auto-detected and with --aligned: identical printed numbers
    rows = []
    for argv in (["--bins", str(root / "faces.bin")],
                 ["--pairs", str(root / "pairs.txt"), "--images", str(root / "aligned")],
                 ["--pairs", str(root / "pairs.txt"), "--images", str(root / "aligned"), "--aligned"]):
        assert main(["eval", *ckpt, *argv, "--roc", ""]) == 0
        out = capsys.readouterr().out
        rows.append(_row(out, "faces" if "--bins" in argv else "pairs"))
    assert main(["eval", "--embeddings", str(root / "ext.npz"), "--pairs", str(root / "pairs.txt"), "--roc", ""]) == 0
    rows.append(_row(capsys.readouterr().out, "ext"))
    # accuracy ± std and AUC columns (the threshold column agrees to print precision too)
    assert len({(r[2], r[4], r[6]) for r in rows}) == 1, rows
    assert rows[0][2] == f"{100 * by_bin.accuracy.mean:.2f}"


def test_raw_folder_is_refused_with_the_fix(setup, capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = setup
    ckpt = ["--checkpoint", str(root / "ckpt.safetensors"), "--backbone", "pool", "--embedding-size", "16"]
    argv = ["eval", *ckpt, "--pairs", str(root / "pairs.txt"), "--images", str(root / "raw"), "--roc", ""]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    n = len(read_pairs(root / "pairs.txt").unique_names())  # only the images the pairs name are looked at
    assert err[0].startswith(f"marginface eval: {root / 'raw'} holds raw photos, not aligned 112x112 faces ({n} of {n} "
                             "images, e.g. ")
    assert f"is 248x248). Align them first: marginface align {root / 'raw'} ALIGNED --fallback median" in err[0]
    assert len(err) <= 2
    assert main([*argv[:-2], "--aligned", "--roc", ""]) == 2
    assert f"--aligned: {n} of {n} images" in capsys.readouterr().err
    # the old behaviour, now only on request and labelled in the output
    assert main([*argv[:-2], "--center-crop", "--roc", ""]) == 0
    assert "note: pairs: preprocessed by center_crop_resize (not aligned faces" in capsys.readouterr().out


def test_one_class_bin_is_refused_before_the_model_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from marginface.data.bins import write_verification_bin

    image = (tmp_path / "x.png")
    Image.fromarray(np.zeros((112, 112, 3), np.uint8)).save(image)
    write_verification_bin(tmp_path / "same.bin", [image.read_bytes()] * 20, [True] * 10)
    # the checkpoint does not exist: the set is refused first
    code = main(["eval", "--checkpoint", str(tmp_path / "none.safetensors"), "--backbone", "x", "--bins",
                 str(tmp_path / "same.bin"), "--roc", ""])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert err[0].startswith("marginface eval: same: all 10 pairs are same pairs: a verification set needs same "
                             "and different pairs")


def test_bin_without_fold_structure_gets_stated_stratified_folds() -> None:
    """A .bin holding every same pair before every different pair: 10 contiguous folds would each hold one class
    (each fold's threshold then chosen on an unrelated mix); the stratified rule is used and stated."""
    rng = np.random.default_rng(0)
    issame = np.repeat([True, False], 50)
    scores = rng.normal(size=100) + issame
    ids, note = verification.resolve_folds(issame, None, "onefold")
    assert note == ("onefold has no fold structure whose 10 contiguous folds each hold both classes; used 10 "
                    "stratified folds: the i-th same pair and the i-th different pair go to fold i mod 10")
    # independent reference of the rule: rank within the class, mod 10
    expected = np.r_[np.arange(50) % 10, np.arange(50) % 10]
    assert ids.tolist() == expected.tolist()
    result = verification.evaluate_scores(scores, issame, None, "onefold")
    assert result.note == note
    assert f"note: {note}" in verification.format_table([result])
    # interleaved labels (insightface's layout): contiguous folds as before, no note
    mixed = np.tile([True, False], 50)
    ids, note = verification.resolve_folds(mixed)
    assert note == "" and ids.tolist() == np.repeat(np.arange(10), 10).tolist()


def test_one_fold_pairs_file_uses_the_stated_rule(setup) -> None:
    root, model = setup
    body = (root / "pairs.txt").read_text().splitlines()[1:]
    same = [line for line in body if len(line.split()) == 3]
    different = [line for line in body if len(line.split()) == 4]
    (root / "one.txt").write_text("\n".join([f"1 {len(same)}", *same, *different]) + "\n")
    result = verification.evaluate_pairs(model, root / "one.txt", root / "aligned")
    assert "used 10 stratified folds" in result.note
    assert np.unique(result.accuracy.fold_ids).size == 10


def test_threshold_column(setup) -> None:
    _, _ = setup
    y = np.tile([True, False], 30)
    s = np.where(y, 0.8, 0.2) + np.linspace(0, 0.01, 60)
    result = verification.evaluate_scores(s, y, 10, name="sep")
    table = verification.format_table([result])
    header, _, row = table.splitlines()[:3]
    assert header.split()[4] == "threshold"
    t = result.accuracy.thresholds
    assert row.split()[5] == (f"{t.min():.4f}" if t.min() == t.max() else f"{t.min():.4f}..{t.max():.4f}")
    assert 0.2 < t.min() <= t.max() < 0.8
    # thresholds that differ only beyond 4 decimals are still shown as different
    close = dataclasses.replace(result, accuracy=dataclasses.replace(result.accuracy,
                                                                     thresholds=np.array([0.999871, 0.999912])))
    assert verification.format_threshold(close) == "0.99987..0.99991"


def test_one_pairs_parser_header_checked_by_every_reader(setup, capsys: pytest.CaptureFixture[str]) -> None:
    """A header that contradicts the file: `prepare lfw-bin` used to accept it while `eval --pairs` refused it
    after embedding; now both refuse it at once, with the same message."""
    root, _ = setup
    body = (root / "pairs.txt").read_text().splitlines()[1:]
    (root / "bad.txt").write_text("\n".join(["10 300", *body]) + "\n")
    expected = f"{root / 'bad.txt'}: header declares 10 folds x (2 x 300) = 6000 pairs, found 60; fix the header"
    assert main(["prepare", "lfw-bin", "--lfw", str(root / "aligned"), "--pairs", str(root / "bad.txt"), "--out",
                 str(root / "x.bin"), "--aligned"]) == 2
    assert capsys.readouterr().err.startswith(f"marginface prepare lfw-bin: {expected}")
    assert main(["eval", "--checkpoint", str(root / "missing.safetensors"), "--backbone", "pool", "--pairs",
                 str(root / "bad.txt"), "--images", str(root / "aligned"), "--roc", ""]) == 2
    assert capsys.readouterr().err.startswith(f"marginface eval: {expected}")
    assert not (root / "x.bin").exists()


def test_json_output(setup, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    root, model = setup
    assert main(["eval", "--checkpoint", str(root / "ckpt.safetensors"), "--backbone", "pool", "--embedding-size",
                 "16", "--pairs", str(root / "pairs.txt"), "--images", str(root / "aligned"), "--roc", "",
                 "--json"]) == 0
    [data] = json.loads(capsys.readouterr().out)["verification"]
    direct = verification.evaluate_pairs(model, root / "pairs.txt", root / "aligned")
    assert data["set"] == "pairs" and data["pairs"] == 60 and data["note"] == ""
    assert data["accuracy"] == direct.accuracy.mean and data["auc"] == pytest.approx(direct.auc, abs=1e-12)
    assert data["thresholds"] == pytest.approx(direct.accuracy.thresholds.tolist(), abs=1e-6)


def test_roc_plot_only_when_asked(setup, tmp_path_factory, monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    """eval used to write roc.png into whatever folder it was run from."""
    pytest.importorskip("matplotlib")
    root, _ = setup
    cwd = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(cwd)
    argv = ["eval", "--checkpoint", str(root / "ckpt.safetensors"), "--backbone", "pool", "--embedding-size", "16",
            "--pairs", str(root / "pairs.txt"), "--images", str(root / "aligned")]
    assert main(argv) == 0
    assert "ROC plot" not in capsys.readouterr().out and list(cwd.iterdir()) == []
    assert main([*argv, "--roc", str(root / "r.png")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"ROC plot: {root / 'r.png'}" and (root / "r.png").is_file()
