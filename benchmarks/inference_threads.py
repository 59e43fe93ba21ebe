"""MobileFaceNet forward time per image with torch's default thread count vs the inference default
(:func:`marginface.inference.threads.default_threads`), measured in the same run, interleaved.

Usage:
    python benchmarks/inference_threads.py [--repeats 30] [--threads 1,2,4]

For each batch size (1 and 2: the photo path of ``verify`` / ``identify``, one face and its mirror; 64: the
``enroll`` / ``calibrate`` batches) and each thread count, the median ms per image over ``repeats`` forwards
after a warm-up; thread counts take turns, so load from other processes hits them alike. Prints the machine's
cores and load average: on a shared machine the numbers are noisy; compare the ratios within one run only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def time_forward(model: torch.nn.Module, batch: int, threads: int, repeats: int) -> float:
    """Median milliseconds per image of ``repeats`` forwards of a (batch, 3, 112, 112) input on ``threads``."""
    torch.set_num_threads(threads)
    x = torch.rand(batch, 3, 112, 112) * 2 - 1
    with torch.inference_mode():
        model(x)  # warm-up: oneDNN primitives are created on the first call of a shape
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) * 1000 / batch)
    return statistics.median(times)


def main() -> None:
    from marginface import backbones
    from marginface.inference.threads import default_threads, physical_cores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", default="", help="thread counts to compare (default: torch's and ours)")
    args = parser.parse_args()
    torch_default = torch.get_num_threads()
    counts = sorted({int(t) for t in args.threads.split(",") if t} or {torch_default, default_threads()})
    print(f"cores: {os.cpu_count()} logical, {physical_cores()} physical; torch default {torch_default} threads; "
          f"inference default {default_threads()}; load average {os.getloadavg()[0]:.1f}")
    model = backbones.create("mobilefacenet", embedding_size=128).eval()
    for batch in (1, 2, 64):
        repeats = max(3, args.repeats // (8 if batch == 64 else 1))
        results = {t: [] for t in counts}
        for _ in range(3):  # interleaved rounds
            for t in counts:
                results[t].append(time_forward(model, batch, t, repeats))
        base = statistics.median(results[torch_default]) if torch_default in results else None
        cells = []
        for t in counts:
            ms = statistics.median(results[t])
            ratio = f" ({base / ms:.2f}x torch default)" if base and t != torch_default else ""
            cells.append(f"{t} thread{'s' if t > 1 else ''}: {ms:.1f} ms/img{ratio}")
        print(f"batch {batch:3d}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
