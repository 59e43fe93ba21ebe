"""Images per second of a full training step (data already in memory; forward, loss, backward, SGD step).

    python benchmarks/training.py                                  # CPU: mobilefacenet, batch 32
    python benchmarks/training.py --device cuda --backbone iresnet50 --batch 256 --compile

Variants, measured in one run and reported as ratios against eager fp32: bf16 autocast + channels_last, and
(with --compile) the same under torch.compile. The step is the trainer's own ``train_step``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from marginface.training.config import load_config
from marginface.training.trainer import Trainer


def build(args: argparse.Namespace, precision: str, channels_last: bool, out: str) -> Trainer:
    overrides = [
        f"model.backbone={args.backbone}", f"batch_size={args.batch}", f"precision={precision}",
        f"channels_last={str(channels_last).lower()}", f"device={args.device}", f"output_dir={out}",
        "data.synthetic_identities=1000", "data.synthetic_images_per_identity=2", f"loss.name={args.loss}",
    ]
    return Trainer(load_config(None, overrides)).setup()


def images_per_second(trainer: Trainer, batch: int, steps: int, compile_model: bool) -> float:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, 112, 112, generator=gen) * 2 - 1
    labels = torch.randint(0, trainer.loss.num_classes, (batch,), generator=gen)
    if compile_model:
        trainer.backbone.forward = torch.compile(trainer.backbone.forward)
    for _ in range(2):  # warm-up (and compilation)
        trainer.train_step(images, labels)
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(images, labels)
    sync()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilefacenet")
    parser.add_argument("--loss", default="arcface")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile)")
    args = parser.parse_args()
    variants = [("eager fp32", "fp32", False, False), ("eager bf16 + channels_last", "bf16", True, False)]
    if args.compile:
        variants.append(("compiled bf16 + channels_last", "bf16", True, True))
    print(f"device={args.device} backbone={args.backbone} loss={args.loss} batch={args.batch} "
          f"torch={torch.__version__} threads={torch.get_num_threads()}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, precision, channels_last, compile_model in variants:
            trainer = build(args, precision, channels_last, f"{tmp}/{len(results)}")
            results[name] = images_per_second(trainer, args.batch, args.steps, compile_model)
    base = results["eager fp32"]
    print("| variant | img/s | ratio vs eager fp32 |\n|---|---|---|")
    for name, value in results.items():
        print(f"| {name} | {value:.1f} | {value / base:.2f}x |")


if __name__ == "__main__":
    main()
