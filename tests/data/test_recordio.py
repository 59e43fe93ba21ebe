import struct

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from marginface.data.folder import FolderDataset
from marginface.data.recordio import (
    MAGIC,
    IRHeader,
    RecordFile,
    RecordIODataset,
    frame,
    pack,
    rebuild_index,
    unpack,
    write_recordio,
)
from tests.data.helpers import face, make_folder, write_image


def _naive_records(rec_bytes: bytes) -> list[tuple[int, bytes]]:
    """Independent reader of the dmlc format, written from the spec: (offset, joined data) per record."""
    out, pos, current, start = [], 0, [], 0
    while pos < len(rec_bytes):
        magic, lrec = struct.unpack("<II", rec_bytes[pos:pos + 8])
        assert magic == 0xCED7230A
        cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
        if cflag in (0, 1):
            start, current = pos, []
        current.append(rec_bytes[pos + 8:pos + 8 + length])
        pos += 8 + (length + 3) // 4 * 4
        if cflag in (0, 3):
            out.append((start, struct.pack("<I", 0xCED7230A).join(current)))
    return out


def _naive_unpack(data: bytes):
    flag, label, rec_id, id2 = struct.unpack("<IfQQ", data[:24])
    labels = list(struct.unpack(f"<{flag}f", data[24:24 + 4 * flag])) if flag else label
    return flag, labels, rec_id, data[24 + 4 * flag:]


def _handmade(tmp_path, records: list[tuple[int, bytes]]):
    """Write .rec/.idx byte by byte (no library code): records are (key, data); returns the prefix."""
    rec, idx = bytearray(), []
    for key, data in records:
        idx.append(f"{key}\t{len(rec)}\n")
        rec += struct.pack("<II", 0xCED7230A, len(data)) + data + b"\0" * (-len(data) % 4)
    (tmp_path / "hand.rec").write_bytes(bytes(rec))
    (tmp_path / "hand.idx").write_text("".join(idx))
    return tmp_path / "hand"


def _png(rgb) -> bytes:
    import cv2

    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def test_folder_to_rec_round_trip(tmp_path):
    make_folder(tmp_path / "faces", per_identity=3, ext=".jpg")
    folder = FolderDataset(tmp_path / "faces")
    stats = write_recordio(folder, tmp_path / "out" / "train")
    assert (stats.num_images, stats.num_classes, stats.reencoded) == (9, 3, 0)
    rec = RecordIODataset(tmp_path / "out" / "train.rec")
    assert len(rec) == 9 and rec.num_classes == 3
    for i in range(9):  # bytes stored verbatim, so decoding gives identical tensors
        image, label = rec[i]
        expected, expected_label = folder[i]
        assert label == expected_label and torch.equal(image, expected)
    assert RecordIODataset(tmp_path / "out" / "train").num_classes == 3  # prefix form
    assert (tmp_path / "out" / "train.classes.json").is_file()


def test_written_layout_matches_insightface_convention(tmp_path):
    make_folder(tmp_path / "faces", names=("a", "b"), per_identity=2)
    write_recordio(tmp_path / "faces", tmp_path / "train")
    records = _naive_records((tmp_path / "train.rec").read_bytes())
    idx = [tuple(map(int, line.split("\t"))) for line in (tmp_path / "train.idx").read_text().splitlines()]
    assert idx == [(key, offset) for key, (offset, _) in enumerate(records)]
    headers = [_naive_unpack(data) for _, data in records]
    assert headers[0][:2] == (2, [5.0, 7.0])  # images 1..4, identity records 5..6
    assert [h[1] for h in headers[1:5]] == [0.0, 0.0, 1.0, 1.0]
    assert [h[1] for h in headers[5:]] == [[1.0, 3.0], [3.0, 5.0]]
    assert headers[1][3] == (tmp_path / "faces" / "a" / "00.png").read_bytes()


def test_reads_an_independently_written_file_with_split_and_array_labels(tmp_path):
    payload = bytearray(_png(face(0, 0)))
    payload[8:12] = struct.pack("<I", MAGIC)  # magic inside data: a PNG chunk length we then repair
    data = struct.pack("<IfQQ", 2, 0.0, 1, 0) + struct.pack("<2f", 4.0, 9.0) + _png(face(1, 0))
    plain = struct.pack("<IfQQ", 0, 2.0, 2, 0) + _png(face(2, 0))
    prefix = _handmade(tmp_path, [(7, data), (9, plain)])
    dataset = RecordIODataset(prefix)
    assert len(dataset) == 2 and dataset.num_classes == 5  # no header 0: labels scanned, max 4 -> 5
    assert [dataset[0][1], dataset[1][1]] == [4, 2]
    # a record containing the magic at an aligned offset must be split on write and rejoined on read
    record = struct.pack("<IfQQ", 0, 1.0, 0, 0) + bytes(payload)
    framed = frame(record)
    assert framed.count(struct.pack("<I", MAGIC)) == 2 and _naive_records(framed) == [(0, record)]
    (tmp_path / "split.rec").write_bytes(framed)
    (tmp_path / "split.idx").write_text("0\t0\n")
    assert RecordFile(tmp_path / "split.rec", tmp_path / "split.idx").read(0) == record


def test_pack_unpack_round_trip():
    header, payload = unpack(pack(IRHeader(0, [1.5, 2.5, 3.5], 11, 3), b"xyz"))
    assert header.flag == 3 and header.label.tolist() == [1.5, 2.5, 3.5] and header.id == 11 and payload == b"xyz"
    header, payload = unpack(pack(IRHeader(0, 42, 5, 0), b""))
    assert (header.flag, header.label, payload) == (0, 42.0, b"")
    with pytest.raises(ValueError, match="fewer than"):
        unpack(b"short", "record 3")


def test_truncated_rec_is_a_clear_error(tmp_path):
    make_folder(tmp_path / "faces", per_identity=2)
    write_recordio(tmp_path / "faces", tmp_path / "train")
    rec = tmp_path / "train.rec"
    data = rec.read_bytes()
    last_image = int((tmp_path / "train.idx").read_text().splitlines()[6].split("\t")[1])
    rec.write_bytes(data[: last_image + 100])  # cut inside record 6, drop the identity records
    with pytest.raises(ValueError, match="truncated|past the end"):
        RecordIODataset(tmp_path / "train")
    with pytest.raises(ValueError, match="truncated"):
        rebuild_index(rec, tmp_path / "re.idx")


def test_idx_that_disagrees_with_rec(tmp_path):
    make_folder(tmp_path / "faces", per_identity=2)
    write_recordio(tmp_path / "faces", tmp_path / "train")
    idx = tmp_path / "train.idx"
    good = idx.read_text()
    lines = good.splitlines()
    key, offset = lines[3].split("\t")
    idx.write_text("\n".join([*lines[:3], f"{key}\t{int(offset) + 4}", *lines[4:]]) + "\n")
    dataset = RecordIODataset(tmp_path / "train")
    with pytest.raises(ValueError, match="says record 3 is at offset .*does not belong"):
        dataset[2]
    idx.write_text(good.replace(lines[-1], lines[-1].split("\t")[0] + "\t999999999"))
    with pytest.raises(ValueError, match="points past the end"):
        RecordIODataset(tmp_path / "train")
    idx.write_text("\n".join(lines[:4] + lines[5:]) + "\n")
    with pytest.raises(ValueError, match="lacks 1 of them"):
        RecordIODataset(tmp_path / "train")
    idx.write_text("0\tzero\n")
    with pytest.raises(ValueError, match="train.idx:1: expected 'key<TAB>offset'"):
        RecordIODataset(tmp_path / "train")
    idx.unlink()
    with pytest.raises(FileNotFoundError, match="rebuild_index"):
        RecordIODataset(tmp_path / "train")
    rebuild_index(tmp_path / "train.rec")
    assert idx.read_text() == good


def test_resized_and_lossless_sources_are_reencoded(tmp_path):
    write_image(tmp_path / "faces" / "a" / "0.jpg", face(0, 0, size=140))
    write_image(tmp_path / "faces" / "a" / "1.bmp", face(0, 1))
    stats = write_recordio(FolderDataset(tmp_path / "faces", resize=True), tmp_path / "train")
    assert stats.reencoded == 2
    dataset = RecordIODataset(tmp_path / "train")
    assert dataset[0][0].shape == (3, 112, 112)
    assert np.array_equal(dataset[1][0].numpy(), FolderDataset(tmp_path / "faces", resize=True)[1][0].numpy())


def test_loader_workers_read_in_parallel(tmp_path):
    make_folder(tmp_path / "faces", per_identity=4)
    write_recordio(tmp_path / "faces", tmp_path / "train")
    dataset = RecordIODataset(tmp_path / "train")
    dataset[0]  # the parent opened its descriptor: workers must not share it
    loader = DataLoader(dataset, batch_size=3, num_workers=2)
    labels = torch.cat([labels for _, labels in loader])
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_cli_prepare_rec(tmp_path, capsys):
    from marginface.cli import main

    make_folder(tmp_path / "faces", per_identity=2, ext=".jpg")
    (tmp_path / "faces" / "bob" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    assert main(["prepare", "rec", str(tmp_path / "faces"), str(tmp_path / "out" / "train")]) == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert main(["prepare", "rec", str(tmp_path / "faces"), str(tmp_path / "out" / "train"), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "wrote 6 images of 3 identities" in out and "1 skipped" in out and "broken.jpg" in out
    dataset = RecordIODataset(tmp_path / "out" / "train")
    assert len(dataset) == 6 and dataset.num_classes == 3


def test_failed_pack_leaves_no_partial_files(tmp_path):
    make_folder(tmp_path / "faces", per_identity=2, ext=".jpg")
    (tmp_path / "faces" / "carol" / "zz.jpg").write_bytes(b"\xff\xd8\xff broken")
    with pytest.raises(ValueError, match="zz.jpg"):
        write_recordio(tmp_path / "faces", tmp_path / "train")
    assert not (tmp_path / "train.rec").exists() and not (tmp_path / "train.idx").exists()
