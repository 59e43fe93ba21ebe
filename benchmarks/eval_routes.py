"""The three evaluation routes on real LFW faces: ``.bin``, ``pairs.txt`` + aligned folder, ``--embeddings``.

One model, one set of faces (a subset of LFW's official pairs: the first ``--per-fold`` same and different pairs of
each of the 10 folds, keeping the folds), evaluated through ``marginface eval`` three ways; plus what the folder
route printed before issue 11 (centre crops of the aligned faces, now only with ``--center-crop``) and what it
says about the raw photos. Without ``--checkpoint`` the model is a randomly initialised backbone (seed 0): the
point is that the routes agree, not the accuracy.

    python benchmarks/eval_routes.py --lfw112 /work/cache/lfw112 --lfw-raw ../shared/data/lfw/lfw-deepfunneled \
        --pairs ../shared/data/lfw/pairs.txt --per-fold 30
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from marginface import backbones
from marginface.cli import main
from marginface.data.pairs import read_pairs
from marginface.evaluation.embed import embed_files


def subset_pairs(src: Path, dst: Path, per_fold: int) -> None:
    """The first ``per_fold`` same and different pairs of each fold of an LFW pairs.txt, as a pairs.txt."""
    lines = src.read_text().splitlines()
    folds, n = map(int, lines[0].split())
    out = [f"{folds} {per_fold}"]
    for k in range(folds):
        block = lines[1 + 2 * n * k: 1 + 2 * n * (k + 1)]
        out += block[:per_fold] + block[n:n + per_fold]
    dst.write_text("\n".join(out) + "\n")


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def row(text: str) -> str:
    """The table row of the evaluated set (third line of the output)."""
    return text.splitlines()[2]


def main_(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="eval_routes_"))
    pairs = tmp / "pairs.txt"
    subset_pairs(Path(args.pairs), pairs, args.per_fold)
    checkpoint = args.checkpoint
    if checkpoint is None:
        torch.manual_seed(0)
        model = backbones.create(args.backbone, embedding_size=args.embedding_size)
        checkpoint = str(tmp / "random.safetensors")
        save_file({f"backbone.{k}": v.contiguous() for k, v in model.state_dict().items()}, checkpoint)
    model_args = ["--checkpoint", checkpoint, "--backbone", args.backbone, "--embedding-size",
                  str(args.embedding_size), "--roc", "", "--batch-size", "64"]
    assert run(["prepare", "lfw-bin", "--lfw", args.lfw112, "--pairs", str(pairs), "--out", str(tmp / "lfw_sub.bin"),
                "--aligned"])[0] == 0
    from marginface.models.backbone import load_backbone

    names = read_pairs(pairs).unique_names()
    emb = embed_files(load_backbone(args.backbone, checkpoint, args.embedding_size),
                      [Path(args.lfw112) / n for n in names], preprocess=None, batch_size=64)
    np.savez(tmp / "emb.npz", names=np.array(names, dtype=str), embeddings=emb)
    routes = {
        ".bin": ["eval", *model_args, "--bins", str(tmp / "lfw_sub.bin")],
        "pairs + aligned folder": ["eval", *model_args, "--pairs", str(pairs), "--images", args.lfw112],
        "--embeddings": ["eval", "--embeddings", str(tmp / "emb.npz"), "--pairs", str(pairs), "--roc", ""],
        "before: centre crops (now --center-crop)": ["eval", *model_args, "--pairs", str(pairs), "--images",
                                                     args.lfw112, "--center-crop"],
    }
    print(f"{len(read_pairs(pairs))} pairs, {len(names)} images; model {args.backbone} "
          f"{'(random init, seed 0)' if args.checkpoint is None else checkpoint}")
    for name, argv in routes.items():
        code, out, err = run(argv)
        print(f"{name:42s} exit {code}  {row(out) if code == 0 else err.strip()}")
    if args.lfw_raw:
        code, _, err = run(["eval", *model_args, "--pairs", str(pairs), "--images", args.lfw_raw])
        print(f"{'raw photos folder':42s} exit {code}  {err.strip().splitlines()[0]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw112", required=True, help="aligned LFW (marginface align ... --fallback median)")
    parser.add_argument("--lfw-raw", help="the raw LFW folder (to show the refusal)")
    parser.add_argument("--pairs", required=True, help="LFW pairs.txt (10 folds)")
    parser.add_argument("--per-fold", type=int, default=30, help="same (and different) pairs kept per fold")
    parser.add_argument("--checkpoint", help="safetensors weights (default: a random init, seed 0)")
    parser.add_argument("--backbone", default="mobilefacenet")
    parser.add_argument("--embedding-size", type=int, default=128)
    main_(parser.parse_args())
