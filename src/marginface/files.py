"""The one way marginface replaces a file: write a temporary file beside it, fsync, rename over it, fsync the folder.

A reader (or a crash, or a kill) sees the old file or the new one, never half of one. Every writer of a result —
a run's ``config.json``, model cards, gallery ``CURRENT``, reports, CSVs, ``.bin`` sets, figures — goes through
:func:`atomic_write` (or its text/bytes forms), so the rules live here once:

- the temporary name is unique (process id + random token) and hidden (``.name.<pid>-<token>.tmp.suffix``): two
  writers of the same file never write into each other's temporary file, and the last rename wins whole;
- it keeps the final suffix, because some writers pick the format from it (matplotlib's ``savefig``, numpy's
  ``savez``);
- the file gets the mode the user's umask asks for (``0o666 & ~umask``, e.g. 0644) — safetensors alone writes 0600,
  and a model written by one user must be readable by the colleague or service it is shared with;
- a failed write removes its temporary file and re-raises.

Folders written as a whole (checkpoint ``step_<N>``, gallery versions) are renamed into place by their owners; they
use :func:`fsync_tree` and :func:`fsync_dir` from here before and after the rename.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

#: Longest stem kept in a temporary name: the added ``.<pid>-<token>.tmp`` must not push it past NAME_MAX (255).
_MAX_STEM = 200


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temporary path in ``path``'s folder, unique to this call, hidden, with ``path``'s suffix."""
    path = Path(path)
    return path.with_name(f".{path.stem[:_MAX_STEM]}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], *, durable: bool = True) -> Path:
    """Replace ``path`` by what ``write(tmp)`` writes to a temporary path beside it. Returns ``path``.

    ``write`` must create the file at the path it is given (e.g. ``lambda tmp: save_file(tensors, str(tmp))``).
    ``durable``: fsync the file before the rename and the folder after it, so a power cut after the return keeps
    the new file; ``False`` only for scratch output whose loss costs nothing.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        respect_umask(tmp)
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> Path:
    """Replace ``path`` by ``data`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), durable=durable)


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8", durable: bool = True) -> Path:
    """Replace ``path`` by ``text`` atomically (see :func:`atomic_write`); no newline translation."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(text.encode(encoding)), durable=durable)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's data to the disk (opened read-only: works on any file this process may read)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (names created, renamed or removed in it) to the disk."""
    fsync_file(folder)  # POSIX: a directory opened read-only can be fsynced like a file


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file directly in ``folder``, then ``folder`` itself: before renaming a folder written whole."""
    folder = Path(folder)
    for entry in folder.iterdir():
        if entry.is_file():
            fsync_file(entry)
    fsync_dir(folder)


def respect_umask(path: str | os.PathLike) -> None:
    """Give a file the mode the user's umask asks for (``0o666 & ~umask``, e.g. 0644).

    safetensors' ``save_file`` creates its files with mode 0600 whatever the umask, so a model written by one
    user could not be read by the colleague or the service account it is shared with.
    """
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    """The process umask, read without changing it where Linux tells it (``/proc/self/status``, kernel >= 4.7):
    reading it with ``os.umask`` means setting it, and another thread creating a file meanwhile would get mode
    0666."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)  # reading the umask means setting it: put it back at once
    return mask
