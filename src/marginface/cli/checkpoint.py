"""``marginface checkpoint merge|split``: rewrite a step of a run for another placement of its class centres.

A sharded run keeps each rank's rows of the centre matrix in its own checkpoint (``rank<k>/``); ``merge`` writes
the step as one folder holding all of them (the full matrix, its momentum), ``split`` as R shards. The trainer
needs neither to resume on another number of processes (it re-cuts the centres itself, ``training/reshard.py``);
they are for reading the full centres, or for moving a run to a machine where only the rewritten layout fits.
"""

from __future__ import annotations

import argparse
import json


def add_checkpoint(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "checkpoint", help="merge a sharded run's class centres into one checkpoint, or split them into R shards",
        description="Reads one step of RUN (every rank<k>/ folder of a sharded run must be present) and writes it "
        "as a new run folder OUTPUT: merge -> one checkpoint with the full class-centre matrix and its optimizer "
        "state; split -> the centres cut into --shards pieces, as a run on that many processes writes them. "
        "config.json and history.jsonl are copied; OUTPUT must not exist. Resuming with another number of "
        "processes needs neither: `marginface train` re-cuts the centres itself.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="{merge,split}")
    for name, text in (("merge", "all shards into one checkpoint (the full centre matrix)"),
                       ("split", "into --shards shards")):
        action = actions.add_parser(name, help=text)
        action.add_argument("run", help="the run folder (output_dir) to read")
        action.add_argument("output", help="the new run folder to write (must not exist)")
        action.add_argument("--step", type=int, default=None,
                            help="the step to rewrite (default: the newest step all of whose shards were saved)")
        if name == "split":
            action.add_argument("--shards", type=int, required=True, help="number of shards (processes) to cut into")
        action.add_argument("--json", action="store_true", help="print the result as JSON")
        action.set_defaults(func=run_checkpoint_command)


def run_checkpoint_command(args: argparse.Namespace) -> int:
    from marginface.runs import RunDir, rewrite

    shards = args.shards if args.action == "split" else 1
    saved = rewrite(args.run, args.output, shards, args.step)
    result = {"run": args.run, "step": saved.step, "classes": saved.num_classes, "from_shards": saved.shards,
              "to_shards": shards, "output": args.output,
              "folders": [str(RunDir(args.output).step_dir(saved.step, k)) for k in range(shards)]}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"step {saved.step} of {args.run}: {saved.num_classes} classes in {saved.shards} shard(s) -> "
              f"{shards} shard(s) in {args.output}")
        for folder in result["folders"]:
            print(f"  {folder}")
    return 0
