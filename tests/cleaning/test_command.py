import json
import re
from pathlib import Path

import pytest

from marginface.cleaning.lists import read_lines, read_merge_map
from marginface.cli import main
from marginface.data.folder import FolderDataset
from marginface.data.recordio import RecordIODataset


def _html_refs_exist(page: Path) -> int:
    refs = re.findall(r"src='([^']+)'", page.read_text())
    assert all((page.parent / r).is_file() for r in refs), refs
    return len(refs)


def test_outliers_command_flags_the_planted_swap_and_writes_a_usable_image_list(planted, tmp_path, capsys):
    train, train_npz, _, _ = planted
    out = tmp_path / "out"
    assert main(["clean", "outliers", "--embeddings", str(train_npz), "--out", str(out), "--threshold", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "flagged 1 images in 1 identities" in text and "kept 47" in text
    assert [line.split("\t")[0] for line in read_lines(out / "outliers.tsv")] == ["a/07.png"]
    keep = read_lines(out / "image_list.txt")
    assert len(keep) == 47 and "a/07.png" not in keep
    ds = FolderDataset(tmp_path / "train", image_list=keep)
    assert len(ds) == 47 and ds.num_classes == 6
    assert _html_refs_exist(out / "index.html") == 1


def test_outliers_calibrated_and_robust_rule_json(planted, tmp_path, capsys):
    _, train_npz, _, _ = planted
    for rule in ("threshold", "robust"):
        out = tmp_path / rule
        assert main(["clean", "outliers", "--embeddings", str(train_npz), "--out", str(out), "--rule", rule,
                     "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["flagged_images"] == 1 and report["calibration"]["threshold"] == report["threshold"]
        assert json.loads((out / "report.json").read_text())["rule"] == rule


def test_duplicates_command_finds_the_planted_pair_and_merge_map(planted, tmp_path, capsys):
    _, train_npz, _, _ = planted
    out = tmp_path / "dup"
    assert main(["clean", "duplicates", "--embeddings", str(train_npz), "--out", str(out)]) == 0
    assert "1 duplicate pairs" in capsys.readouterr().out
    assert [line.split("\t")[:2] for line in read_lines(out / "duplicates.tsv")] == [["e", "f"]]
    merge = read_merge_map(out / "merge_map.tsv")
    assert merge in ({"e": "f"}, {"f": "e"})
    ds = FolderDataset(tmp_path / "train", merge_identities=merge)
    assert ds.num_classes == 5 and len(ds) == 48
    assert _html_refs_exist(out / "index.html") == 1


def test_overlap_command_excludes_the_planted_test_identity_in_train_and_prepare_rec(planted, tmp_path, capsys):
    _, train_npz, _, test_npz = planted
    out = tmp_path / "ov"
    assert main(["clean", "overlap", "--train", str(train_npz), "--test", str(test_npz), "--test", str(test_npz),
                 "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["excluded_identities"] == 1 and report["overlap_pairs"] == {"test.1": 1, "test.2": 1}
    assert read_lines(out / "exclude_identities.txt") == ["a"]
    assert "src='distributions.png'" in (out / "index.html").read_text()
    assert sorted(line.split("\t")[:3] for line in read_lines(out / "overlap.tsv")) == [["a", "test.1", "x"],
                                                                                       ["a", "test.2", "x"]]
    assert _html_refs_exist(out / "index.html") == 3  # two pair sheets and the distributions
    rec = tmp_path / "rec" / "train"
    assert main(["prepare", "rec", str(tmp_path / "train"), str(rec), "--exclude-identities",
                 str(out / "exclude_identities.txt")]) == 0
    ds = RecordIODataset(rec)
    assert ds.num_classes == 5 and len(ds) == 40


def test_prepare_rec_image_list(planted, tmp_path, capsys):
    from marginface.cleaning.lists import write_lines

    keep = write_lines(tmp_path / "keep.txt", ["b/00.png", "b/01.png", "c/03.png"])
    assert main(["prepare", "rec", str(tmp_path / "train"), str(tmp_path / "r"), "--image-list", str(keep)]) == 0
    assert "wrote 3 images of 2 identities" in capsys.readouterr().out
    assert main(["prepare", "rec", str(tmp_path / "train"), str(tmp_path / "r"), "--image-list",
                 str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt does not exist" in capsys.readouterr().err


def test_clean_errors_are_one_line(tmp_path, capsys):
    assert main(["clean", "outliers", "--embeddings", str(tmp_path / "no.npz"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("marginface clean outliers:") and "no.npz does not exist" in err


def test_noise_command_reports_precision_recall_of_both_rules(planted, tmp_path, capsys):
    _, train_npz, _, _ = planted
    assert main(["clean", "noise", "--embeddings", str(train_npz), "--fraction", "0.1", "--seeds", "0", "1",
                 "--threshold", "0.5", "--json"]) == 0
    level = json.loads(capsys.readouterr().out)["levels"][0]
    assert level["images"] == 48 and level["fraction"] == 0.1 and len(level["swapped_images"]) == 2
    # the planted a/07 (really c) is a natural error on top: precision < 1 is allowed, recall must be perfect
    assert level["threshold"]["recall"] == 1.0 and level["threshold"]["precision"] > 0.7
    assert main(["clean", "noise", "--embeddings", str(train_npz), "--min-images", "99"]) == 2


@pytest.mark.slow
def test_embed_command_with_a_model_file_matches_load_model(tmp_path, capsys):
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from marginface import backbones
    from marginface.cleaning.embedders import load_npz
    from marginface.inference import load_model

    torch.manual_seed(0)
    state = {f"backbone.{k}": v.contiguous()
             for k, v in backbones.create("mobilefacenet", embedding_size=16).state_dict().items()}
    save_file(state, str(tmp_path / "m.safetensors"))
    rng = np.random.default_rng(0)
    for name in ("p/1.png", "p/2.png", "q/1.png"):
        (tmp_path / "img" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(tmp_path / "img" / name)
    args = ["clean", "embed", str(tmp_path / "img"), "--out", str(tmp_path / "e.npz"), "--model",
            str(tmp_path / "m.safetensors"), "--backbone", "mobilefacenet", "--embedding-size", "16"]
    assert main(args) == 0
    assert "embedded 3 images of 2 identities" in capsys.readouterr().out
    data = load_npz(tmp_path / "e.npz")
    model = load_model(tmp_path / "m.safetensors", backbone="mobilefacenet", embedding_size=16)
    ref = model.embed_pixels(np.array(Image.open(tmp_path / "img" / "q/1.png"))[None].transpose(0, 3, 1, 2))
    np.testing.assert_allclose(data.embeddings[2], ref[0], atol=1e-5)
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "img" / "q" / "2.png")
    assert main(args) == 2
    assert "takes aligned 112x112 faces" in capsys.readouterr().err


def test_overlap_thresholds_per_test_set(planted, tmp_path, capsys):
    _, train_npz, _, test_npz = planted
    base = ["clean", "overlap", "--train", str(train_npz), "--test", str(test_npz), "--test", str(test_npz),
            "--out", str(tmp_path / "o"), "--no-sheet", "--json", "--threshold"]
    assert main(base + ["0.5", "1e-9"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["overlap_pairs"] == {"test.1": 1, "test.2": 0} and report["thresholds"]["test.2"] == 1e-9
    assert main(base + ["0.5", "0.5", "0.5"]) == 2
    assert "one per test set (2)" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", ["", "-0000.params"])
def test_embed_command_reads_an_mxnet_model_directly(tmp_path, capsys, suffix):
    """``clean embed --model PREFIX`` (or its .params) runs an MXNet model-zoo file without conversion; each row
    equals the float64 reference graph on the image and its mirror, summed then normalised (flip TTA)."""
    import numpy as np
    from PIL import Image

    from marginface.cleaning.embedders import load_npz
    from tests.inference.test_mxnet_format import reference_forward, write_tiny_model

    prefix = write_tiny_model(tmp_path / "zoo")
    rng = np.random.default_rng(3)
    pixels = {}
    for name in ("p/1.png", "p/2.png", "q/1.png"):
        (tmp_path / "img" / name).parent.mkdir(parents=True, exist_ok=True)
        pixels[name] = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
        Image.fromarray(pixels[name]).save(tmp_path / "img" / name)
    assert main(["clean", "embed", str(tmp_path / "img"), "--out", str(tmp_path / "e.npz"),
                 "--model", f"{prefix}{suffix}"]) == 0
    assert "embedded 3 images of 2 identities" in capsys.readouterr().out
    data = load_npz(tmp_path / "e.npz")
    assert data.names == sorted(pixels) and data.embeddings.shape == (3, 5)
    for row, name in zip(data.embeddings, data.names):
        chw = pixels[name].astype(np.float64).transpose(2, 0, 1)[None]
        ref = (reference_forward(Path(f"{prefix}-symbol.json"), Path(f"{prefix}-0000.params"), chw)
               + reference_forward(Path(f"{prefix}-symbol.json"), Path(f"{prefix}-0000.params"), chw[..., ::-1]))[0]
        np.testing.assert_allclose(row, ref / np.linalg.norm(ref), atol=1e-4)
