"""Evaluate a checkpoint on several ``.bin`` sets, embedding each distinct image once.

A verification ``.bin`` stores both images of every pair, so an image used by k pairs is stored k times (CFP-FP:
14,000 stored, 5,901 distinct; CFP-FF shares its frontal images). This script decodes every ``.bin``
(``data.bins.load_verification_bin``), embeds each distinct *encoded* image once (identical bytes decode to the
identical tensor, so the embeddings are exactly those of ``marginface eval --bins``), then runs the same protocol
(``verification.evaluate_interleaved``: flip TTA unless ``--no-flip``, cosine, 10 contiguous folds) and prints
``eval``'s table and the field's one-row table. Use it where CPU time is short; ``marginface eval`` gives the
same numbers.

    python benchmarks/bins_once.py --checkpoint best.safetensors --backbone mobilefacenet --embedding-size 128 \\
        --bins cfp_fp.bin cfp_ff.bin
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from marginface.data.bins import load_verification_bin, read_verification_bin
from marginface.evaluation import report, verification
from marginface.evaluation.embed import embed_tensor, load_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--backbone", help="registry name; default: from the checkpoint's model card")
    parser.add_argument("--embedding-size", type=int, help="default: from the checkpoint's model card, else 512")
    parser.add_argument("--bins", nargs="+", required=True)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json", help="also write the results as JSON here")
    parser.add_argument("--no-flip", action="store_true", help="no flip TTA (half the forwards)")
    args = parser.parse_args()
    model = load_backbone(args.backbone, args.checkpoint, args.embedding_size)
    distinct: dict[bytes, int] = {}
    per_bin, tensors = [], []
    for path in args.bins:
        encoded, issame = read_verification_bin(path)
        images, _ = load_verification_bin(path)
        rows = []
        for k, data in enumerate(encoded):
            if data not in distinct:
                distinct[data] = len(distinct)
                tensors.append(images[k])
            rows.append(distinct[data])
        per_bin.append((Path(path).stem, np.array(rows), issame))
    stored = sum(len(rows) for _, rows, _ in per_bin)
    start = time.perf_counter()
    embeddings = embed_tensor(model, torch.stack(tensors), batch_size=args.batch_size, flip=not args.no_flip)
    seconds = time.perf_counter() - start
    flip = "off" if args.no_flip else "on"
    print(f"embedded {len(tensors):,} distinct images (of {stored:,} stored) in {seconds:.0f} s, flip TTA {flip}")
    results = [verification.evaluate_interleaved(embeddings[rows], issame, 10, name) for name, rows, issame in per_bin]
    print(verification.format_table(results))
    print(report.standard_table(Path(args.checkpoint).stem, results, []))
    for r in results:
        print(f"{r.name} per-fold accuracy: {' '.join(f'{a:.4f}' for a in r.accuracy.accuracies)}")
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(Path(args.checkpoint).stem, results, []), indent=2))


if __name__ == "__main__":
    main()
