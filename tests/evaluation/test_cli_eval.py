"""`marginface eval`: embeddings file path, checkpoint path (.bin + pairs folder), and option errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from marginface.cli import main
from marginface.evaluation import verification

PAIRS = "2 2\nAnn 1 2\nBob 1 3\nAnn 1 Bob 2\nCy 1 Bob 1\nCy 1 2\nAnn 2 3\nBob 3 Cy 2\nAnn 3 Cy 1\n"
NAMES = [f"{p}/{p}_{i:04d}.jpg" for p, n in {"Ann": 3, "Bob": 3, "Cy": 2}.items() for i in range(1, n + 1)]


def test_eval_embeddings_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pairs.txt").write_text(PAIRS)
    emb = np.random.default_rng(0).normal(size=(len(NAMES), 16)).astype(np.float32)
    np.savez(tmp_path / "ext.npz", names=np.array(NAMES), embeddings=emb)
    roc = tmp_path / "out" / "roc.png"
    code = main(["eval", "--embeddings", str(tmp_path / "ext.npz"), "--pairs", str(tmp_path / "pairs.txt"),
                 "--metric", "euclidean", "--roc", str(roc)])
    out = capsys.readouterr().out
    assert code == 0 and roc.is_file()
    expected = verification.evaluate_embeddings_file(tmp_path / "ext.npz", tmp_path / "pairs.txt", "euclidean")
    acc = expected.accuracy
    row = out.splitlines()[2]
    assert row.split()[:2] == ["ext", "8"] and f"{100 * acc.mean:.2f} ± {100 * acc.std:.2f}" in row


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pairs", "p.txt"], "give --checkpoint (or --embeddings"),
        (["--embeddings", "e.npz"], "--embeddings needs --pairs"),
        (["--checkpoint", "c.safetensors", "--backbone", "x", "--pairs", "p.txt"], "--pairs and --images"),
        (["--checkpoint", "c.safetensors", "--backbone", "x"], "nothing to evaluate"),
    ],
)
def test_eval_option_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", *argv, "--roc", ""]) == 2
    assert message in capsys.readouterr().err


class Pool(nn.Module):
    """(B, 3, 112, 112) -> (B, D): pooled colour through a linear map; a real backbone is far too slow here."""

    def __init__(self, embedding_size: int) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def test_eval_checkpoint_on_bin_and_pairs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    backbones = pytest.importorskip("marginface.backbones")
    bins = pytest.importorskip("marginface.data.bins")
    calls = []

    def create(name: str, embedding_size: int = 512, **kwargs: object) -> nn.Module:
        calls.append((name, embedding_size))
        return Pool(embedding_size)

    monkeypatch.setattr(backbones, "create", create)
    torch.manual_seed(0)
    state = {f"backbone.{k}": v for k, v in Pool(64).state_dict().items()}
    save_file({**state, "head.weight": torch.zeros(5, 64)}, tmp_path / "ckpt.safetensors")
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(24):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(buf, format="PNG")
        encoded.append(buf.getvalue())
    bins.write_verification_bin(tmp_path / "toy.bin", encoded, [True, False] * 6)
    (tmp_path / "pairs.txt").write_text(PAIRS)
    for name in NAMES:
        (tmp_path / "img" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(tmp_path / "img" / name)
    code = main(["eval", "--checkpoint", str(tmp_path / "ckpt.safetensors"), "--backbone", "anynet",
                 "--embedding-size", "64", "--bins", str(tmp_path / "toy.bin"), "--pairs",
                 str(tmp_path / "pairs.txt"), "--images", str(tmp_path / "img"), "--batch-size", "4",
                 "--roc", str(tmp_path / "roc.png")])
    out = capsys.readouterr().out
    assert code == 0 and (tmp_path / "roc.png").is_file()
    assert calls == [("anynet", 64)]
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:4]}
    assert rows == {"toy": "12", "pairs": "8"}
    # the loaded weights were used: same numbers as evaluating the same model directly
    model = Pool(64)
    model.load_state_dict({k[len("backbone."):]: v for k, v in state.items()})
    direct = verification.evaluate_bin(model, tmp_path / "toy.bin")
    assert f"{100 * direct.accuracy.mean:.2f} ± {100 * direct.accuracy.std:.2f}" in out.splitlines()[2]
