"""`marginface eval --ijb DIR` / `--json`: the standard table and JSON, equal to calling the library directly."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import save_file
from tests.evaluation.ijb_fixture import write_synthetic_ijb
from tests.evaluation.test_ijb import Pool

from marginface.cli import main
from marginface.evaluation import ijb, report, verification

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An IJB-C-layout release, a toy .bin and a checkpoint of the test model (keys under 'backbone.')."""
    from PIL import Image

    from marginface.data.bins import write_verification_bin

    root = tmp_path_factory.mktemp("eval")
    write_synthetic_ijb(root / "IJB" / "IJBC", num_subjects=8, seed=3)
    save_file({f"backbone.{k}": v for k, v in Pool().state_dict().items()}, root / "model.safetensors")
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(40):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(buf, format="PNG")
        encoded.append(buf.getvalue())
    write_verification_bin(root / "cfp_fp.bin", encoded, [True, False] * 10)
    return root


@pytest.fixture
def pool_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    from marginface import backbones

    monkeypatch.setattr(backbones, "create", lambda name, embedding_size=512, **kw: Pool())


def _args(root: Path, *extra: str) -> list[str]:
    return ["eval", "--checkpoint", str(root / "model.safetensors"), "--backbone", "pool", "--embedding-size",
            "24", "--roc", "", *extra]


def test_eval_ijb_json_equals_the_library(setup: Path, pool_backbone: None, capsys: pytest.CaptureFixture) -> None:
    assert main(_args(setup, "--bins", str(setup / "cfp_fp.bin"), "--ijb", str(setup / "IJB"), "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    model = Pool()
    direct = ijb.result_to_dict(ijb.evaluate_model(model, setup / "IJB" / "IJBC"))
    got = out["ijb"][0]
    assert got["name"] == "IJB-C" and got["verification"] == direct["verification"]
    assert got["identification"] == direct["identification"]
    bin_result = verification.evaluate_bin(model, setup / "cfp_fp.bin")
    assert out["verification"][0]["set"] == "CFP-FP"
    assert out["verification"][0]["accuracy"] == pytest.approx(bin_result.accuracy.mean)
    assert out["model"] == "model"


def test_eval_standard_table(setup: Path, pool_backbone: None, capsys: pytest.CaptureFixture,
                             tmp_path: Path) -> None:
    argv = _args(setup, "--bins", str(setup / "cfp_fp.bin"), "--ijb", str(setup / "IJB" / "IJBC"),
                 "--ijb-no-detector-score")
    argv[argv.index("--roc") + 1] = str(tmp_path / "roc.png")
    assert main(argv) == 0
    assert (tmp_path / "roc.png").is_file() and (tmp_path / "roc_ijb.png").is_file()
    out = capsys.readouterr().out
    model = Pool()
    acc = verification.evaluate_bin(model, setup / "cfp_fp.bin").accuracy
    options = ijb.PoolingOptions(detector_score=False)
    tar = ijb.evaluate_model(model, setup / "IJB" / "IJBC", options).verification.tar_at_far
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0].split("|")[1:-1] == [" model ", " CFP-FP        ", " IJB-C TAR@1e-05 ", " IJB-C TAR@1e-04 "]
    cells = [c.strip() for c in table[1].split("|")[1:-1]]
    assert cells[1] == f"{100 * acc.mean:.2f} ± {100 * acc.std:.2f}"
    assert cells[3] == report._pct(float(tar.tar[list(tar.far).index(1e-4)]))
    assert "IJB-C: " in out and "1:N  rank-1" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ijb", "nowhere"], "no IJB release"),
        (["--json"], "nothing to evaluate"),
    ],
)
def test_eval_ijb_errors(setup: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(setup)
    assert main(_args(setup, *extra)) == 2
    assert message in capsys.readouterr().err


def test_eval_ijb_needs_a_model(setup: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", "--ijb", str(setup / "IJB"), "--roc", ""]) == 2
    assert "--ijb needs --checkpoint" in capsys.readouterr().err


def test_report_json_has_no_nan(setup: Path) -> None:
    result = ijb.evaluate_model(Pool(), setup / "IJB" / "IJBC")
    text = json.dumps(report.to_json("m", [], [result]), allow_nan=False)  # NaN TARs become null
    assert '"1e-06": null' in text
