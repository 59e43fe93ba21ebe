"""Real pretrained models (../shared/models) on LFW: 10-fold accuracy with flip TTA on and off from one pass.

Usage:
    python benchmarks/real_models.py lfw --model ../shared/models/insightface_mobilefacenet_y1/model \\
        --bin /work/cache/i29/lfw.bin --cache /work/cache/i29/y1_lfw.npz

Each distinct image of the ``.bin`` (LFW: 7,701 of 12,000 stored) is embedded once, as is its mirror, through
:func:`marginface.inference.load_model` (the model's own contract: channel order, normalisation). The raw
(un-normalised) outputs are kept in ``--cache`` (resumed from there, written every few batches), so flip on
(``normalise(f(x) + f(mirror x))``, insightface's rule, what ``marginface eval`` does) and flip off
(``normalise(f(x))``) come from the same forward passes. The pairs then go through the same functions as
``marginface eval --bins`` (:func:`marginface.evaluation.verification.evaluate_interleaved`: cosine, 10
contiguous folds of 600 pairs, threshold chosen on the other nine).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import torch


def distinct_pixels(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct images (M, 3, 112, 112) uint8 RGB, rows (2N,) index of each stored image, issame (N,))."""
    from PIL import Image

    from marginface.data.bins import read_verification_bin

    encoded, issame = read_verification_bin(path)
    distinct: dict[bytes, int] = {}
    rows = np.array([distinct.setdefault(data, len(distinct)) for data in encoded])
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in distinct])
    return pixels.transpose(0, 3, 1, 2), rows, np.asarray(issame)


def embed_raw(model_path: str, pixels: np.ndarray, cache: Path, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Raw outputs of every image and of its mirror, (M, D) each; resumable through ``cache`` (.npz)."""
    from marginface.inference.model import load_model

    model = load_model(model_path)
    done = np.load(cache) if cache.is_file() else None
    raw = list(done["raw"]) if done is not None else []
    mirrored = list(done["mirrored"]) if done is not None else []
    start = time.perf_counter()
    for i in range(len(raw), len(pixels), batch):
        chunk = torch.from_numpy(pixels[i : i + batch].astype(np.float32))
        raw += list(model.forward(chunk))
        mirrored += list(model.forward(chunk.flip(3)))
        if (i // batch) % 10 == 9 or i + batch >= len(pixels):
            np.savez(cache, raw=np.array(raw), mirrored=np.array(mirrored))
            rate = (len(raw) - (0 if done is None else len(done["raw"]))) / (time.perf_counter() - start)
            print(f"  {len(raw):,}/{len(pixels):,} images ({rate:.1f} img/s, x2 with mirrors)", flush=True)
    return np.array(raw), np.array(mirrored)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run_lfw(args: argparse.Namespace) -> dict:
    from marginface.evaluation.verification import evaluate_interleaved

    pixels, rows, issame = distinct_pixels(args.bin)
    print(f"{len(rows):,} stored images, {len(pixels):,} distinct", flush=True)
    raw, mirrored = embed_raw(args.model, pixels, Path(args.cache), args.batch)
    out = {}
    for label, emb in (("flip", _unit(raw + mirrored)), ("no flip", _unit(raw))):
        result = evaluate_interleaved(emb[rows], issame, name="lfw")
        acc = result.accuracy
        out[label] = {"accuracy": float(acc.mean), "std": float(acc.std),
                      "tar_at_far_1e-3": float(result.tar_at_far.tar[list(result.tar_at_far.far).index(1e-3)])}
        print(f"{label:8s} LFW {100 * acc.mean:.2f} ± {100 * acc.std:.2f}%  "
              f"TAR@FAR=1e-3 {100 * out[label]['tar_at_far_1e-3']:.2f}%", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    lfw = sub.add_parser("lfw")
    lfw.add_argument("--model", required=True)
    lfw.add_argument("--bin", default="/work/cache/lfw.bin")
    lfw.add_argument("--cache", required=True, help=".npz of raw embeddings (resumed)")
    lfw.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    print(json.dumps(run_lfw(args)))


if __name__ == "__main__":
    main()
