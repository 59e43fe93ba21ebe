"""Two runs side by side, or one DDP run over two processes: which trains faster on a 2-core CPU? (docs/results.md)

The loss study (``marginface study``) must use both cores; this measures the two ways, with the study's preset
(``configs/celeba299_mobilefacenet_arcface.yaml``: MobileFaceNet, batch 64), one thread per process and the default
allocator, as a user runs them:

(a) side by side: two ``marginface train`` processes at once, batch 64 each — throughput = the sum of their img/s;
(b) DDP: one ``torchrun --nproc_per_node=2`` run, 32 per rank (the same global batch of 64, the same optimisation)
    — throughput = its img/s (the trainer logs the global rate).

Rates are the trainer's logged img/s over the steps after the first ``--log-every`` (start-up excluded). Prints
both, and the ratio DDP / side by side.

    python benchmarks/two_cores.py --data ../cache/celeba112 [--steps 30] [--log-every 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PRESET = "configs/celeba299_mobilefacenet_arcface.yaml"


def train_argv(data: str, out: Path, steps: int, log_every: int, batch: int) -> list[str]:
    return ["train", "--config", PRESET, "--fresh", f"data.path={data}", "validation.bins=[]", f"steps={steps}",
            f"log_every={log_every}", "checkpoint_every=100000", f"batch_size={batch}", f"output_dir={out}"]


def logged_rate(run_dir: Path, log_every: int) -> float:
    """Mean logged img/s over the rows after the first logging interval."""
    from marginface.training.trainer import read_log

    rates = [rate for step, rate in read_log(run_dir).get("img_per_s", []) if step > log_every]
    if not rates:
        raise RuntimeError(f"{run_dir}/log.csv has no img_per_s after step {log_every}: use more --steps")
    return sum(rates) / len(rates)


def run(commands: list[list[str]]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for cmd in commands]
    for cmd, proc in zip(commands, procs):
        _, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{err[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="aligned folder of the preset (../cache/celeba112)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "marginface.cli"]
    with tempfile.TemporaryDirectory(prefix="two_cores_") as tmp:
        tmp = Path(tmp)
        side = [tmp / "side_a", tmp / "side_b"]
        run([cli + train_argv(args.data, out, args.steps, args.log_every, 64) for out in side])
        side_rate = sum(logged_rate(out, args.log_every) for out in side)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                    "marginface.cli"]
        run([torchrun + train_argv(args.data, tmp / "ddp", args.steps, args.log_every, 32)])
        ddp_rate = logged_rate(tmp / "ddp", args.log_every)
    result = {"side_by_side_img_s": side_rate, "ddp_img_s": ddp_rate, "ddp_over_side_by_side": ddp_rate / side_rate,
              "steps": args.steps, "threads_per_process": 1}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"two runs side by side (batch 64 each): {side_rate:.2f} img/s together")
        print(f"one DDP run over 2 processes (32 per rank): {ddp_rate:.2f} img/s")
        print(f"DDP / side by side = {ddp_rate / side_rate:.3f}")


if __name__ == "__main__":
    main()
