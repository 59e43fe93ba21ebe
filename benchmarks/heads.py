"""Heads at scale: peak memory and step time of ChunkedHead and PartialFCHead against DenseHead, same run.

ArcFace (s=64, m=0.5), B=512, D=512 by default, for each class count C:

* dense       : DenseHead forward + backward, then a torch SGD step (momentum 0.9, weight decay 5e-4);
* chunked     : ChunkedHead forward + backward, then the same torch SGD step;
* chunked_fused: ChunkedHead with the centres' SGD update fused into backward (``fuse_optimizer``): no (C, D)
  gradient; the optimizer step then has nothing left to do for the centres;
* partial_fc  : PartialFCHead (r = --sample-rate) forward + backward + SparseRowSGD step (same hyper-params).

Every optimizer starts in its steady state: the momentum buffers of the centres exist (zeros, which gives the
same first step as torch's ``buf = g``), as after any step of a run, so they are part of the setup's memory and
no head is charged for creating them.

Each (head, C) runs in a fresh subprocess so peaks do not leak between runs. Memory on CPU is the process's
peak resident set (``ru_maxrss``, which sees torch's allocations, unlike tracemalloc) at the end of the first
backward, minus the resident set after setup (centres and inputs): the "extra" bytes forward + backward needed
at their peak. The peak including the optimizer step is printed as well. ``--allocators`` chooses the malloc
settings, each a separate table: ``default`` is glibc as a user runs it (dynamic mmap threshold: freed blocks up
to 32 MiB stay in its heap, where they can fragment); ``mmap4m`` runs the workers with
``MALLOC_MMAP_THRESHOLD_=4194304`` (a tuned setting: blocks of 4 MiB and more are mapped and unmapped each time).
It includes the (C, D) weight gradient, which every head that produces a dense gradient must hold; the report
also prints the figure without it. On CUDA it is ``max_memory_allocated`` minus the allocation after setup.
Time: wall-clock seconds of forward + backward (and of the optimizer step), the median of ``--repeats`` runs
after ``--warmup`` runs. Ratios are against the dense head measured in the same invocation.

    python benchmarks/heads.py --classes 100000 1000000 --warmup 0 --repeats 1
    python benchmarks/heads.py --classes 200000 --modes dense chunked chunked_fused --allocators default mmap4m
    python benchmarks/heads.py --device cuda --classes 1000000 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODES = ("dense", "chunked", "chunked_fused", "partial_fc")


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def build(args: argparse.Namespace):
    """(head, loss, optimizer, embeddings, labels) for one worker run."""
    import torch

    from marginface import losses
    from marginface.heads import ChunkedHead, DenseHead, PartialFCHead, SparseRowSGD

    torch.manual_seed(0)
    loss = losses.create("arcface", embedding_size=args.dim, num_classes=args.num_classes).to(args.device)
    hyper = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    if args.mode == "dense":
        head, optimizer = DenseHead(loss), torch.optim.SGD(loss.parameters(), **hyper)
    elif args.mode in ("chunked", "chunked_fused"):
        head, optimizer = ChunkedHead(loss, args.chunk_size), torch.optim.SGD(loss.parameters(), **hyper)
        if args.mode == "chunked_fused":
            head.fuse_optimizer(optimizer)
    else:
        head = PartialFCHead(loss, sample_rate=args.sample_rate, chunk_size=args.chunk_size)
        optimizer = SparseRowSGD(loss.parameters(), **hyper)
    for p in loss.parameters():  # steady state: buffers written (resident), as after any earlier step
        optimizer.state[p]["momentum_buffer"] = torch.empty_like(p).zero_()
    embeddings = torch.randn(args.batch, args.dim, device=args.device, requires_grad=True)
    labels = torch.randint(0, args.num_classes, (args.batch,), device=args.device)
    return head, loss, optimizer, embeddings, labels


def one_step(head, optimizer, embeddings, labels, device: str) -> tuple[float, float, int]:
    """(forward + backward seconds, optimizer-step seconds, peak memory after backward) of one step."""
    optimizer.zero_grad(set_to_none=True)
    embeddings.grad = None
    synchronize(device)
    start = time.perf_counter()
    head(embeddings, labels).backward()
    synchronize(device)
    middle = time.perf_counter()
    peak = peak_memory(device)
    optimizer.step()
    synchronize(device)
    return middle - start, time.perf_counter() - middle, peak


def peak_memory(device: str) -> int:
    import torch

    return torch.cuda.max_memory_allocated() if device == "cuda" else peak_rss_bytes()


def worker(args: argparse.Namespace) -> dict:
    """Run one (head, C) case in this process and return its figures."""
    import torch

    head, loss, optimizer, embeddings, labels = build(args)
    cuda = args.device == "cuda"
    base = torch.cuda.memory_allocated() if cuda else rss_bytes()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    fb, steps = [], []
    for i in range(args.warmup + args.repeats):
        t_fb, t_step, peak = one_step(head, optimizer, embeddings, labels, args.device)
        if i == 0:
            peak_fb = peak  # forward + backward (the fused head's centre update included)
        if i >= args.warmup:
            fb.append(t_fb)
            steps.append(t_step)
    grad = loss.weight.grad
    grad_bytes = 0 if grad is None or grad.is_sparse else grad.numel() * grad.element_size()
    return {"mode": args.mode, "classes": args.num_classes, "extra_bytes": peak_fb - base,
            "step_extra_bytes": peak_memory(args.device) - base, "weight_grad_bytes": grad_bytes,
            "fwd_bwd_s": statistics.median(fb), "step_s": statistics.median(steps)}


#: malloc settings of the worker processes (--allocators): name -> environment additions
ALLOCATORS = {"default": {}, "mmap4m": {"MALLOC_MMAP_THRESHOLD_": str(4 * 2**20)}}


def run_case(args: argparse.Namespace, mode: str, classes: int, allocator: str) -> dict:
    """One worker subprocess; its last stdout line is the JSON result."""
    cmd = [sys.executable, __file__, "--worker", mode, "--num-classes", str(classes),
           "--batch", str(args.batch), "--dim", str(args.dim), "--device", args.device,
           "--sample-rate", str(args.sample_rate), "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    if args.chunk_size is not None:
        cmd += ["--chunk-size", str(args.chunk_size)]
    env = {**os.environ, **ALLOCATORS[allocator]}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} at C={classes} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(rows: dict[str, dict]) -> None:
    gib = 2.0**30
    dense = rows["dense"]
    dense_step = dense["fwd_bwd_s"] + dense["step_s"]
    for mode, r in rows.items():
        step = r["fwd_bwd_s"] + r["step_s"]
        without = r["extra_bytes"] - r["weight_grad_bytes"]
        dense_without = dense["extra_bytes"] - dense["weight_grad_bytes"]
        ratio = r["extra_bytes"] / dense["extra_bytes"]
        print(f"  {mode:<13} extra {r['extra_bytes'] / gib:7.2f} GiB ({ratio:.3f}x)"
              f" | w/o weight grad {without / gib:6.2f} GiB ({without / dense_without:.3f}x)"
              f" | fwd+bwd {r['fwd_bwd_s']:7.2f} s ({r['fwd_bwd_s'] / dense['fwd_bwd_s']:.2f}x)"
              f" | +step {step:7.2f} s ({step / dense_step:.2f}x, speed-up {dense_step / step:.2f}x)"
              f" | peak with optimizer {r['step_extra_bytes'] / gib:6.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="classes per chunk (default: the heads' own, sized from the batch)")
    parser.add_argument("--sample-rate", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--allocators", nargs="+", choices=list(ALLOCATORS), default=["default"],
                        help="malloc settings, one table each: default (glibc as users run it), mmap4m (tuned)")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--num-classes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.mode = args.worker
        print(json.dumps(worker(args)))
        return
    if "dense" not in args.modes:
        parser.error("--modes must include dense: every ratio is against it")
    from tqdm import tqdm

    print(f"B={args.batch} D={args.dim} device={args.device} chunk_size={args.chunk_size} "
          f"sample_rate={args.sample_rate} warmup={args.warmup} repeats={args.repeats}")
    for allocator in args.allocators:
        for classes in args.classes:
            modes = tqdm(args.modes, desc=f"{allocator} C={classes}", leave=False)
            rows = {mode: run_case(args, mode, classes, allocator) for mode in modes}
            print(f"allocator={allocator} C={classes}:")
            report(rows)


if __name__ == "__main__":
    main()
