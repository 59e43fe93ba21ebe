"""Evaluate a checkpoint on several ``.bin`` sets, embedding each distinct image once, and time the embedding.

``marginface eval --bins`` does the same since 2026-12-03 (``verification.evaluate_bins``: a ``.bin`` stores both
images of every pair, so an image used by k pairs is stored k times — LFW + CFP-FP + CFP-FF: 40,000 stored,
14,582 distinct); this script stays because docs/*.md ran their measurements with it, and it
prints the embedding time and the per-fold accuracies, and writes the JSON to a file.

    python benchmarks/bins_once.py --checkpoint best.safetensors --bins cfp_fp.bin cfp_ff.bin --no-flip
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from marginface.evaluation import report, verification
from marginface.models.backbone import load_backbone


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
    start = time.perf_counter()
    results = verification.evaluate_bins(model, args.bins, batch_size=args.batch_size, flip=not args.no_flip)
    print(f"decoded, embedded and evaluated {len(args.bins)} set(s) in {time.perf_counter() - start:.0f} s, "
          f"flip TTA {'off' if args.no_flip else 'on'}")
    print(verification.format_table(results))
    print(report.standard_table(Path(args.checkpoint).stem, results, []))
    for r in results:
        print(f"{r.name} per-fold accuracy: {' '.join(f'{a:.4f}' for a in r.accuracy.accuracies)}")
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(Path(args.checkpoint).stem, results, []), indent=2))


if __name__ == "__main__":
    main()
