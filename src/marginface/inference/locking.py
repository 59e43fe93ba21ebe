"""A writer lock per folder: ``fcntl.flock`` on ``FOLDER/.lock``, so that two processes (or threads) writing one
gallery take turns instead of overwriting each other's versions.

``flock`` locks belong to an open file description: two processes, or two threads that each open the file, exclude
each other; the kernel drops the lock when its holder exits or is killed, so a crashed writer never leaves the
folder locked. Re-entering the lock in the thread that holds it is a no-op (a save inside a locked update).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from marginface.errors import UserError

LOCK_NAME = ".lock"
#: how long a writer waits for another one before giving up with an error, seconds.
WAIT_S = 600.0
_held = threading.local()  # .folders: the resolved folders this thread holds


def _held_folders() -> set[str]:
    if not hasattr(_held, "folders"):
        _held.folders = set()
    return _held.folders


@contextmanager
def writer_lock(folder: str | os.PathLike, wait_s: float = WAIT_S,
                on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold ``folder``'s writer lock for the ``with`` block (creating the folder if needed).

    Args:
        wait_s: seconds to wait for another holder before raising UserError (which names its pid).
        on_wait: called once with a message when the lock is busy (e.g. the CLI prints it to stderr).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key, held = str(folder.resolve()), _held_folders()
    if key in held:
        yield
        return
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, folder, wait_s, on_wait)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # who holds it, for the waiting writer's message
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _acquire(fd: int, folder: Path, wait_s: float, on_wait: Callable[[str], None] | None) -> None:
    import fcntl

    deadline, told = time.monotonic() + wait_s, False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        holder = _holder(folder)
        if time.monotonic() >= deadline:
            raise UserError(f"{folder} is being written by another process ({holder}) for more than {wait_s:.0f} s: "
                            "wait for it to finish (or stop it) and run again")
        if not told and on_wait is not None:
            on_wait(f"waiting for another writer of {folder} ({holder}) to finish...")
            told = True
        time.sleep(0.05)


def _holder(folder: Path) -> str:
    try:
        pid = (folder / LOCK_NAME).read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid else "pid unknown"


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists (signal 0 probes without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
