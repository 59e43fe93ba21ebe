"""Cost of the triplet loss with in-batch mining per training step, as a ratio to the backbone's forward+backward.

    python benchmarks/triplet.py                                   # mobilefacenet, P x K = 16 x 4, D=128, CPU
    python benchmarks/triplet.py --device cuda --backbone iresnet50 --p 128 --k 4 --dim 512

One step of triplet fine-tuning is: backbone forward+backward on the P x K images (the baseline, measured in
the same run), plus the triplet loss's forward+backward on the (B, D) embeddings: the (B, B) distance matrix,
the mining (batch-hard / batch-all / semi-hard) and the loss. The second part is timed alone on detached
embeddings for every mining and distance, and printed as a ratio to the first. An ArcFace head over
``--classes`` centres is timed the same way for comparison. Under torchrun the all-gather of the embeddings
(B x D float32) comes on top; it is not measured here (one process). Medians of ``--repeats`` interleaved rounds
after a warm-up (the loss parts ``--inner`` times per round), default threads.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from marginface import backbones, losses
from marginface.triplet import DISTANCES, MININGS, TripletLoss


def timed(fn: Callable[[], None], device: str) -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def backbone_step(model: torch.nn.Module, images: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(images).float().pow(2).mean().backward()  # a negligible loss: the backbone's own cost
    return step


def loss_step(loss: torch.nn.Module, emb: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        emb.grad = None
        loss.zero_grad(set_to_none=True)
        loss(emb, labels).backward()
    return step


def run(args: argparse.Namespace) -> dict[str, float]:
    """Median seconds per entry; the rounds are interleaved so machine drift hits every entry alike."""
    torch.manual_seed(0)
    batch = args.p * args.k
    model = backbones.create(args.backbone, embedding_size=args.dim).to(args.device).train()
    images = torch.randn(batch, 3, 112, 112, device=args.device)
    labels = torch.arange(args.p, device=args.device).repeat_interleave(args.k)
    emb = torch.randn(batch, args.dim, device=args.device).requires_grad_(True)
    steps = {"backbone forward+backward": backbone_step(model, images)}
    arcface = losses.create("arcface", embedding_size=args.dim, num_classes=args.classes).to(args.device)
    steps[f"arcface head, C={args.classes:,}"] = loss_step(arcface, emb, labels % args.classes)
    for mining in MININGS:
        for distance in DISTANCES:
            steps[f"triplet {mining}, {distance}"] = loss_step(TripletLoss(0.3, distance, mining), emb, labels)
    for step in steps.values():  # warm-up
        timed(step, args.device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():  # the cheap loss parts run --inner times per round: a robust median
            for _ in range(1 if name.startswith("backbone") else args.inner):
                times[name].append(timed(step, args.device))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilefacenet")
    parser.add_argument("--p", type=int, default=16, help="identities per batch")
    parser.add_argument("--k", type=int, default=4, help="images per identity")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=10_000, help="centres of the ArcFace head compared")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inner", type=int, default=20, help="timings of each loss part per round")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"backbone={args.backbone} B={args.p}x{args.k}={args.p * args.k} D={args.dim}")
    table = run(args)
    base = table["backbone forward+backward"]
    print("| step part | ms | ratio to backbone fwd+bwd |")
    print("|---|---|---|")
    for name, seconds in table.items():
        print(f"| {name} | {seconds * 1e3:.2f} | {seconds / base:.4f} |")


if __name__ == "__main__":
    main()
