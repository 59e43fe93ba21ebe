"""Unreadable identity folders, dangling links and FIFOs are reported as what they are, and --skip-bad skips them."""

import os

import pytest

from marginface.align.pipeline import list_images
from marginface.data.folder import FolderDataset
from tests.data.helpers import make_folder, unreadable_folder


def test_unreadable_identity_folder_is_named_or_skipped(tmp_path, monkeypatch):
    make_folder(tmp_path / "faces", per_identity=2)
    locked = sorted(p for p in (tmp_path / "faces").iterdir() if p.is_dir())[0]
    unreadable_folder(monkeypatch, locked)
    with pytest.raises(ValueError, match=rf"identity folder {locked} \(Permission denied\).*`skip_bad=True`"):
        FolderDataset(tmp_path / "faces")
    dataset = FolderDataset(tmp_path / "faces", skip_bad=True)
    assert dataset.skip_reasons[locked] == "unreadable folder (Permission denied)"
    with pytest.raises(ValueError, match=rf"cannot read identity folder {locked}.*`skip_bad=True`"):
        list_images(tmp_path / "faces")
    images, ignored = list_images(tmp_path / "faces", skip_bad=True)
    assert locked in ignored and all(p.parent != locked for p in images)


def test_dangling_link_and_fifo_are_named_as_such(tmp_path):
    make_folder(tmp_path / "faces", per_identity=2)
    first = sorted(p for p in (tmp_path / "faces").iterdir() if p.is_dir())[0]
    os.symlink(tmp_path / "gone.jpg", first / "link.jpg")
    with pytest.raises(ValueError, match=r"link.jpg is a dangling symbolic link"):
        FolderDataset(tmp_path / "faces")
    os.remove(first / "link.jpg")
    os.mkfifo(first / "pipe.jpg")
    with pytest.raises(ValueError, match=r"pipe.jpg is not a regular file \(a FIFO, socket or device\)"):
        FolderDataset(tmp_path / "faces")
