"""``marginface losses | train | demo | configs``: the training commands (library: ``marginface.training``)."""

from __future__ import annotations

import argparse
import json

from marginface.errors import UserError


def add_losses(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("losses", help="list the registered margin losses")
    parser.add_argument("--params", action="store_true",
                        help="also list each loss's parameters and their defaults (loss.params in a config)")
    parser.set_defaults(func=run_losses)


def run_losses(args: argparse.Namespace) -> int:
    from marginface import losses

    for name in losses.available():
        if not args.params:
            print(name)
            continue
        params = ", ".join(f"{k}={v!r}" for k, v in losses.parameters(name).items())
        print(f"{name}: {params or '(no parameters)'}")
    return 0


def add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a face model from a YAML preset (+ key=value overrides)",
                                   description="Train from a preset (marginface configs lists them) or a YAML file, "
                                   "with key=value overrides. Rerunning the same command resumes from the last "
                                   "checkpoint; Ctrl-C / SIGTERM checkpoint the current step and stop.")
    parser.add_argument("--config", help="preset name or YAML file, e.g. synthetic_mobilefacenet_arcface")
    parser.add_argument("--list", action="store_true", help="list the presets and exit")
    parser.add_argument("--fresh", action="store_true", help="delete the run folder first instead of resuming")
    parser.add_argument("--allow-schedule-change", action="store_true",
                        help="resume although lr / steps / milestones differ from the saved run (recorded in "
                        "its history.jsonl)")
    parser.add_argument("overrides", nargs="*", help="section.field=value, e.g. optim.lr=0.05 loss.name=cosface")
    parser.set_defaults(func=run_train)


def no_config_message() -> str:
    """What ``marginface train`` says when it is given nothing to train."""
    from marginface.training import presets

    return ("no config given: choose a preset with --config NAME_OR_FILE (marginface configs lists them):\n"
            + presets.preset_listing()
            + "\nor train the built-in defaults explicitly with key=value overrides (e.g. steps=100 device=cpu)")


def run_train(args: argparse.Namespace) -> int:
    from marginface.training import presets

    if args.list:
        print(presets.preset_listing())
        return 0
    if not args.config and not args.overrides:
        raise UserError(no_config_message())
    from marginface.training.config import load_config
    from marginface.training.trainer import clear_run, train

    config = load_config(args.config and presets.resolve_config(args.config), args.overrides)
    if args.fresh:
        clear_run(config.output_dir)
    train(config, allow_schedule_change=args.allow_schedule_change)
    return 0


def add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="train on synthetic identities for a few minutes (CPU)",
        description="Train the demo model. An interrupted demo (Ctrl-C / SIGTERM) resumes from its checkpoint "
        "when the same command is run again; a finished one (report.html written) is deleted and run anew.")
    parser.add_argument("--output-dir", default="runs/demo",
                        help="run folder (an interrupted demo there resumes; a finished one is replaced)")
    parser.add_argument("--steps", type=int, default=None, help="default: the demo's 250 steps")
    parser.add_argument("--fresh", action="store_true", help="delete the run folder first instead of resuming")
    parser.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from marginface.experiments.demo import run_demo as demo

    demo(args.output_dir, args.steps, fresh=args.fresh)
    return 0


def add_configs(subparsers: argparse._SubParsersAction) -> None:
    """``marginface configs``: list the presets, one line each."""
    parser = subparsers.add_parser("configs", help="list the training presets (configs/*.yaml), one line each",
                                   description="List the YAML presets marginface train --config accepts.")
    parser.add_argument("--json", action="store_true", help="print {name: {path, description}} as JSON")
    parser.set_defaults(func=run_configs)


def run_configs(args: argparse.Namespace) -> int:
    from marginface.training import presets

    if getattr(args, "json", False):
        print(json.dumps({n: {"path": str(p), "description": presets.describe(p)}
                          for n, p in presets.presets().items()}, indent=1))
    else:
        print(presets.preset_listing())
    return 0
