"""Where the optional shared research data lives (``../shared/data`` beside a checkout, or $MARGINFACE_SHARED)."""

from __future__ import annotations

import os
from pathlib import Path

from marginface.files import respect_umask  # moved to marginface.files; kept for one release

__all__ = ["respect_umask", "shared_data_dir"]


def shared_data_dir() -> Path | None:
    """Return the shared data folder if it exists, else ``None``.

    ``$MARGINFACE_SHARED_DATA`` wins; otherwise ``<repo>/../shared/data`` is tried, which is where developers'
    and CI checkouts find it. A user's machine usually has neither, and callers must cope with ``None``.
    """
    env = os.environ.get("MARGINFACE_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path
    return None
