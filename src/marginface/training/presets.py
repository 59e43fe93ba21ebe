"""The YAML presets under ``configs/`` and ``marginface configs`` (also ``marginface train --list``).

A preset is ``configs/<dataset>_<backbone>_<loss>.yaml``; its first comment line says what it is for. Presets are
found in ``./configs`` (the working directory, e.g. a checkout) and beside the source tree.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def preset_dirs() -> list[Path]:
    """Folders searched for presets: ``./configs``, then ``<checkout>/configs``; those that exist, once each."""
    candidates = [Path.cwd() / "configs", Path(__file__).resolve().parents[3] / "configs"]
    found: list[Path] = []
    for folder in candidates:
        if folder.is_dir() and folder.resolve() not in [f.resolve() for f in found]:
            found.append(folder)
    return found


def presets() -> dict[str, Path]:
    """``{name: path}`` of every preset (name = file stem), the first folder winning on a clash."""
    out: dict[str, Path] = {}
    for folder in preset_dirs():
        for path in sorted(folder.glob("*.yaml")):
            out.setdefault(path.stem, path)
    return out


def describe(path: Path) -> str:
    """The preset's first comment line, or a summary built from its fields when it has none."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return "(no description)"


def preset_listing() -> str:
    """One line per preset: name, then what it is for; or how to get presets when none is found."""
    found = presets()
    if not found:
        return "no presets found (looked in ./configs); a checkout of marginface has them under configs/"
    width = max(map(len, found))
    return "\n".join(f"{name.ljust(width)}  {describe(path)}" for name, path in found.items())


def resolve_config(name_or_path: str) -> Path:
    """A config path, or a preset name (``synthetic_mobilefacenet_arcface``) -> its file.

    Raises:
        FileNotFoundError: neither a file nor a preset; the message lists the presets.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    found = presets()
    if name_or_path in found:
        return found[name_or_path]
    raise FileNotFoundError(f"config {name_or_path} is neither a file nor a preset name; presets:\n"
                            + preset_listing())


def no_config_message() -> str:
    """What ``marginface train`` says when it is given nothing to train."""
    return ("no config given: choose a preset with --config NAME_OR_FILE (marginface configs lists them):\n"
            + preset_listing()
            + "\nor train the built-in defaults explicitly with key=value overrides (e.g. steps=100 device=cpu)")


def add_configs(subparsers: argparse._SubParsersAction) -> None:
    """``marginface configs``: list the presets, one line each."""
    parser = subparsers.add_parser("configs", help="list the training presets (configs/*.yaml), one line each",
                                   description="List the YAML presets marginface train --config accepts.")
    parser.add_argument("--json", action="store_true", help="print {name: {path, description}} as JSON")
    parser.set_defaults(func=run_configs)


def run_configs(args: argparse.Namespace) -> int:
    if getattr(args, "json", False):
        print(json.dumps({n: {"path": str(p), "description": describe(p)} for n, p in presets().items()}, indent=1))
    else:
        print(preset_listing())
    return 0
