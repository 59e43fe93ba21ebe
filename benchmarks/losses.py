"""Forward+backward time of every registered loss relative to ``normface`` (the margin-free baseline).

    python benchmarks/losses.py                      # B=512, D=512, C in {10k, 100k} on CPU
    python benchmarks/losses.py --device cuda --classes 10000 100000 1000000

All losses run the same dense pipeline (B x C cosines), so the ratio isolates what each margin adds. Times are
medians of ``--repeats`` interleaved rounds after a warm-up; ratios against normface come from the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from marginface import losses


def one_step(loss: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> float:
    """Seconds of one forward+backward (embedding and centre gradients)."""
    loss.zero_grad(set_to_none=True)
    x.grad = None
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    loss(x, labels).backward()
    sync()
    return time.perf_counter() - start


def run(batch: int, dim: int, classes: int, repeats: int, device: str, names: list[str]) -> dict[str, float]:
    """Median time per loss. Rounds are interleaved (every loss once per round) so that drift in the machine's
    speed hits every loss alike instead of whichever ran last."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, dim, generator=gen).to(device).requires_grad_(True)
    labels = torch.randint(0, classes, (batch,), generator=gen).to(device)
    built = {}
    for name in ["normface", *[n for n in names if n != "normface"]]:
        torch.manual_seed(0)
        built[name] = losses.create(name, embedding_size=dim, num_classes=classes).to(device).train()
        one_step(built[name], x, labels)  # warm-up (allocations, lazy init)
    times: dict[str, list[float]] = {name: [] for name in built}
    for _ in range(repeats):
        for name, loss in built.items():
            times[name].append(one_step(loss, x, labels))
    return {name: statistics.median(t) for name, t in times.items()}


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
