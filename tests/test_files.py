"""marginface.files: the one atomic writer (temp file beside the target, umask mode, fsync, rename)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from marginface import files


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_text_and_bytes_replace_the_file_whole(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("old")
    assert files.atomic_write_text(path, "new ✓\r\n") == path
    assert path.read_bytes() == "new ✓\r\n".encode()  # utf-8, no newline translation
    files.atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # no temporary file left


def test_callback_output_gets_the_umask_mode(tmp_path):
    def write_0600(tmp: Path) -> None:  # what safetensors' save_file does
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"weights")
        os.close(fd)

    path = files.atomic_write(tmp_path / "model.safetensors", write_0600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()
    assert files._umask() == _umask()


def test_temporary_name_is_hidden_unique_and_keeps_the_suffix(tmp_path):
    seen = []
    files.atomic_write(tmp_path / "fig.png", lambda tmp: (seen.append(tmp), tmp.write_bytes(b"png")))
    files.atomic_write(tmp_path / "fig.png", lambda tmp: (seen.append(tmp), tmp.write_bytes(b"png")))
    assert seen[0] != seen[1]
    assert all(p.parent == tmp_path and p.name.startswith(".fig.") and p.suffix == ".png" for p in seen)
    assert len(files.temp_path(tmp_path / ("x" * 250 + ".csv")).name) <= 255


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.atomic_write(path, fail)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]


def test_two_writers_never_mix(tmp_path):
    """Threads writing the same file: each write is whole (the last rename wins), no temporary file collides."""
    path = tmp_path / "latest"
    texts = [f"{i}" * 200_000 for i in range(8)]

    def write(text: str) -> None:
        for _ in range(5):
            files.atomic_write_text(path, text, durable=False)

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert path.read_text() in texts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]


def test_fsync_tree_and_old_import_paths(tmp_path):
    (tmp_path / "a").write_text("a")
    (tmp_path / "sub").mkdir()
    files.fsync_tree(tmp_path)  # files and the folder; sub-folders are not files: skipped, no error
    from marginface.paths import respect_umask
    from marginface.training.checkpoint import atomic_write_text

    assert respect_umask is files.respect_umask and atomic_write_text is files.atomic_write_text
