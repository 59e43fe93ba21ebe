"""Where the optional shared research data lives (``../shared/data`` beside a checkout, or $MARGINFACE_SHARED)."""

from __future__ import annotations

import os
from pathlib import Path


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


def respect_umask(path: str | os.PathLike) -> None:
    """Give a file the mode the user's umask asks for (``0o666 & ~umask``, e.g. 0644).

    safetensors' ``save_file`` creates its files with mode 0600 whatever the umask, so a model written by one
    user could not be read by the colleague or the service account it is shared with.
    """
    mask = os.umask(0)
    os.umask(mask)  # reading the umask means setting it: put it back at once
    os.chmod(path, 0o666 & ~mask)
