"""The YAML presets under ``configs/``: found, described, resolved (listed by ``marginface configs``, in
``marginface/cli/train.py``).

A preset is ``configs/<dataset>_<backbone>_<loss>.yaml``; its first comment line says what it is for. Presets are
found in ``./configs`` (the working directory, e.g. a checkout) and beside the source tree.
"""

from __future__ import annotations

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
