"""Forward+backward time of every registered loss relative to ``normface`` (the margin-free baseline).

    python benchmarks/losses.py                      # B=512, D=512, C in {10k, 100k} on CPU
    python benchmarks/losses.py --device cuda --classes 10000 100000 1000000

All losses run the same dense pipeline (B x C cosines), so the ratio isolates what each margin adds. Times are
medians of ``--repeats`` runs after a warm-up; ratios against normface are measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from marginface import losses


def time_loss(loss: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward+backward (embedding and centre gradients)."""
    def step() -> None:
        loss.zero_grad(set_to_none=True)
        x.grad = None
        loss(x, labels).backward()

    step()  # warm-up (allocations, lazy init)
    times = []
    for _ in range(repeats):
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(batch: int, dim: int, classes: int, repeats: int, device: str, names: list[str]) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, dim, generator=gen).to(device).requires_grad_(True)
    labels = torch.randint(0, classes, (batch,), generator=gen).to(device)
    results = {}
    for name in ["normface", *[n for n in names if n != "normface"]]:
        torch.manual_seed(0)
        loss = losses.create(name, embedding_size=dim, num_classes=classes).to(device).train()
        results[name] = time_loss(loss, x, labels, repeats)
        del loss
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--losses", nargs="*", default=None, help="default: every registered loss")
    args = parser.parse_args()
    names = args.losses or losses.available()
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"B={args.batch} D={args.dim}")
    table = {c: run(args.batch, args.dim, c, args.repeats, args.device, names) for c in args.classes}
    header = "| loss | " + " | ".join(f"C={c:,} ms | ratio" for c in args.classes) + " |"
    print(header)
    print("|" + "---|" * (1 + 2 * len(args.classes)))
    for name in table[args.classes[0]]:
        cells = []
        for c in args.classes:
            t, base = table[c][name], table[c]["normface"]
            cells.append(f"{t * 1e3:.1f} | {t / base:.2f}x")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
