"""Training throughput of the backbones: eager fp32 (baseline) vs bf16 autocast + channels_last (+ compile).

One training step = forward of a batch of 112x112 faces, a cross-entropy over a linear classifier on the
L2-normalised embeddings, backward, SGD step.  Each variant is timed in the same run and printed as img/s and
as a ratio to eager fp32 of the same backbone.  On CUDA it also reports the achieved TFLOP/s (training FLOPs
counted by torch.utils.flop_counter) and the fraction of the GPU's dense bf16 peak.

    python benchmarks/backbones.py                                  # CPU: iresnet18 + mobilefacenet
    python benchmarks/backbones.py --compile                        # + torch.compile variants
    python benchmarks/backbones.py --costs --backbones all          # parameters and MACs, no timing
    python benchmarks/backbones.py --device cuda --backbones iresnet50 --batch-size 256 --compile
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from marginface import backbones

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' datasheets; --peak-tflops overrides.
BF16_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


@dataclass(frozen=True)
class Variant:
    """One way of running the same training step."""

    name: str
    bf16: bool
    channels_last: bool
    compile: bool


VARIANTS = (
    Variant("eager fp32", False, False, False),
    Variant("eager bf16+CL", True, True, False),
    Variant("compile fp32", False, False, True),
    Variant("compile bf16+CL", True, True, True),
)


def _build(name: str, variant: Variant, device: torch.device, classes: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = backbones.create(name).to(device)
    classifier = nn.Linear(model.embedding_size, classes, bias=False).to(device)
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, classifier


def _step_fn(name: str, variant: Variant, device: torch.device, classes: int) -> Callable[[torch.Tensor], None]:
    """A closure running one fwd + bwd + SGD step on a batch (B, 3, 112, 112)."""
    model, classifier = _build(name, variant, device, classes)
    forward = torch.compile(model) if variant.compile else model
    optimizer = torch.optim.SGD([*model.parameters(), *classifier.parameters()], lr=0.01, momentum=0.9)
    labels_cache: dict[int, torch.Tensor] = {}

    def step(x: torch.Tensor) -> None:
        labels = labels_cache.setdefault(x.shape[0], torch.arange(x.shape[0], device=device) % classes)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant.bf16):
            embeddings = forward(x)
        # the loss stays in float32, as marginface's heads do
        logits = F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(classifier.weight, dim=1)) * 64.0
        F.cross_entropy(logits, labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step: Callable[[torch.Tensor], None], x: torch.Tensor, warmup: int, iters: int) -> tuple[float, float]:
    """Return (img/s over ``iters`` timed steps, seconds spent in warm-up incl. compilation)."""
    start = time.perf_counter()
    for _ in range(warmup):
        step(x)
    _sync(x.device)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(iters):
        step(x)
    _sync(x.device)
    return iters * x.shape[0] / (time.perf_counter() - start), warm


def training_flops_per_image(name: str) -> float:
    """FLOPs of one image's fwd + bwd: 3x the forward's convolutions and matmuls, counted on the meta device.

    3x (backward = gradients w.r.t. inputs and weights, each the forward's cost) rather than counting the
    backward too: torch 2.13's FlopCounterMode ignores ``groups`` in the convolution backward, so it counts a
    depthwise 3x3 conv's backward ~30x too high (measured: 59.6M FLOPs for a 64-channel 28x28 map whose
    forward is 0.9M), which inflated MobileFaceNet's and MobileNet's figures ~3.5x.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = backbones.create(name).eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(2, 3, 112, 112))
    return 3 * counter.get_total_flops() / 2


# Published costs at 112x112: insightface arcface_torch README ("GFLOPs" there are ptflops MACs; its ViT rows
# include the attention products) and the MobileFaceNet paper (0.99M parameters, 221M MACs, 128-d). MobileNet
# and DenseNet-121 have no published 112x112 face figures: theirs are the ImageNet networks at 224x224 with the
# 1000-class classifier (Howard et al. 2017 table 8: 4.2M, 569M mult-adds; torchvision densenet121: 7.98M,
# 2.83 GMACs), whose trunks see the same maps as ours (see docs/backbones.md for the exact reconciliation).
PUBLISHED = {"iresnet18": (None, 2.6), "iresnet50": (None, 6.3), "iresnet100": (65.131, 12.1),
             "iresnet200": (None, 23.5), "mobilefacenet": (0.99, 0.221), "vit_t": (None, 1.5), "vit_s": (None, 5.7),
             "vit_b": (None, 11.4), "vit_l": (None, 25.3), "mobilenet": (4.2, 0.569), "densenet121": (7.98, 2.83)}


def cost_row(name: str, embedding_size: int) -> tuple[float, float, float]:
    """(M parameters, forward GMACs from FlopCounterMode, GMACs ptflops adds for BN (2/elem) + PReLU (1/elem))."""
    from torch.utils.flop_counter import FlopCounterMode

    extra = [0]

    def count(module: nn.Module, args: object, out: torch.Tensor) -> None:
        extra[0] += out.numel() * (2 if isinstance(module, nn.modules.batchnorm._BatchNorm) else 1)

    with torch.device("meta"):
        model = backbones.create(name, embedding_size=embedding_size).eval()
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.PReLU):
                m.register_forward_hook(count)
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, 112, 112))
    return sum(p.numel() for p in model.parameters()) / 1e6, counter.get_total_flops() / 2e9, extra[0] / 1e9


def print_costs(names: list[str]) -> None:
    """Parameters and MACs of each backbone (D = 512; MobileFaceNet also at the paper's D = 128)."""
    print(f"{'backbone':<20} {'params M':>9} {'GMACs':>7} {'+BN/PReLU':>10} {'published M / GMACs':>20}")
    for name in names:
        for size in (512, 128) if name == "mobilefacenet" else (512,):
            params, macs, extra = cost_row(name, size)
            pub = PUBLISHED.get(name, (None, None)) if size == (128 if name == "mobilefacenet" else 512) else None
            shown = " / ".join("-" if v is None else f"{v:g}" for v in pub) if pub else "-"
            print(f"{f'{name} D={size}':<20} {params:9.3f} {macs:7.3f} {macs + extra:10.3f} {shown:>20}")


def _peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override is not None or device.type != "cuda":
        return override
    gpu = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in gpu), None)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="iresnet18,mobilefacenet",
                        help="comma-separated registry names, or 'all'")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on CPU, 256 on CUDA")
    parser.add_argument("--iters", type=int, default=None, help="timed steps (default: 3 on CPU, 30 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default: 1 on CPU, 5 on CUDA)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile variants")
    parser.add_argument("--classes", type=int, default=1000, help="classes of the linear classifier")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--costs", action="store_true", help="print parameters and MACs per backbone, then exit")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.batch_size = args.batch_size or (256 if cuda else 8)
    args.iters = args.iters or (30 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    return args


def main() -> None:
    args = _parse()
    if args.costs:
        print_costs(backbones.available() if args.backbones == "all" else args.backbones.split(","))
        return
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = _peak_tflops(device, args.peak_tflops)
    name_of_device = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    print(f"# device {name_of_device}, torch {torch.__version__}, batch {args.batch_size}, "
          f"{args.warmup} warm-up + {args.iters} timed steps")
    print(f"{'backbone':<14} {'variant':<16} {'img/s':>9} {'vs eager fp32':>14} {'warm-up s':>10} {'TFLOP/s':>8} "
          f"{'of peak':>8}")
    variants = [v for v in VARIANTS if args.compile or not v.compile]
    for name in backbones.available() if args.backbones == "all" else args.backbones.split(","):
        flops = training_flops_per_image(name)
        x = torch.rand(args.batch_size, 3, 112, 112, device=device) * 2 - 1
        baseline = None
        for variant in variants:
            step = _step_fn(name, variant, device, args.classes)
            batch = x.to(memory_format=torch.channels_last) if variant.channels_last else x
            rate, warm = measure(step, batch, args.warmup, args.iters)
            baseline = baseline or rate
            tflops = rate * flops / 1e12
            share = f"{tflops / peak:8.1%}" if peak else f"{'-':>8}"
            print(f"{name:<14} {variant.name:<16} {rate:9.1f} {rate / baseline:13.2f}x {warm:10.1f} "
                  f"{tflops:8.3f} {share}", flush=True)
            torch._dynamo.reset()


if __name__ == "__main__":
    main()
