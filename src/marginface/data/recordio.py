"""insightface RecordIO (``train.rec`` + ``train.idx``) read and written without mxnet.

Format (dmlc-core ``recordio.cc`` and ``mxnet/recordio.py``; all integers little-endian):

- every record: ``uint32 magic 0xced7230a``, ``uint32 lrecord`` (upper 3 bits ``cflag``, lower 29 bits the
  length), the data, then zero padding to a multiple of 4 bytes. A payload that contains the magic at a
  4-byte-aligned position is split there into parts (cflag 1 = first, 2 = middle, 3 = last; 0 = whole) and
  the magic is re-inserted between parts when reading.
- a record's data: the IRHeader ``struct 'IfQQ'`` = (flag, label, id, id2), 24 bytes; when ``flag > 0`` the
  label is an array of ``flag`` float32 that follow the header; then the encoded image.
- the ``.idx``: one ``key<TAB>offset`` line per record, for random access.
- insightface datasets: record 0 is a header whose label is ``(a, b)``: images are keys ``1 .. a-1`` and keys
  ``a .. b-1`` are one record per identity whose label is that identity's image range ``(start, end)``.
  Without such a header every key in the ``.idx`` is an image.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)  # 24
_LENGTH_MASK = (1 << 29) - 1
# read a record in one syscall when the .idx says it spans less than this; otherwise header first
_ONE_READ_LIMIT = 1 << 20


class IRHeader(NamedTuple):
    """The image-record header: ``label`` is a float or a float32 array ``(flag,)``."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def pack(header: IRHeader, payload: bytes) -> bytes:
    """IRHeader + payload -> record data (array labels go after the header, ``flag`` = their count)."""
    label = header.label
    if np.ndim(label) == 0:
        return struct.pack(_IR_FORMAT, 0, float(label), header.id, header.id2) + payload
    values = np.asarray(label, dtype="<f4").ravel()
    return struct.pack(_IR_FORMAT, values.size, 0.0, header.id, header.id2) + values.tobytes() + payload


def unpack(data: bytes, source: str = "record") -> tuple[IRHeader, bytes]:
    """Record data -> (IRHeader, payload). ``source`` names the record in errors."""
    if len(data) < _IR_SIZE:
        raise ValueError(f"{source} holds {len(data)} bytes, fewer than the {_IR_SIZE}-byte IRHeader")
    flag, label, rec_id, id2 = struct.unpack_from(_IR_FORMAT, data)
    payload = data[_IR_SIZE:]
    if flag > 0:
        if len(payload) < 4 * flag:
            raise ValueError(f"{source} declares {flag} float labels but holds {len(payload)} bytes after its header")
        label = np.frombuffer(payload, dtype="<f4", count=flag).copy()
        payload = payload[4 * flag:]
    return IRHeader(flag, label, rec_id, id2), payload


def frame(data: bytes) -> bytes:
    """Record data -> the bytes on disk (magic, lrecord, data, padding), split where the magic occurs."""
    if len(data) > _LENGTH_MASK:
        raise ValueError(f"a RecordIO record holds at most {_LENGTH_MASK} bytes, got {len(data)}")
    aligned = len(data) // 4 * 4
    words = np.frombuffer(data[:aligned], dtype="<u4")
    cuts = (np.flatnonzero(words == MAGIC) * 4).tolist()
    out, start = [], 0
    for cut in cuts:
        out.append(_part(1 if start == 0 else 2, data[start:cut]))
        start = cut + 4
    out.append(_part(3 if cuts else 0, data[start:]))
    return b"".join(out)


def _part(cflag: int, chunk: bytes) -> bytes:
    return struct.pack("<II", MAGIC, (cflag << 29) | len(chunk)) + chunk + b"\0" * (-len(chunk) % 4)


def split_prefix(path: str | Path) -> tuple[Path, Path]:
    """``prefix``, ``prefix.rec`` or ``prefix.idx`` (or a folder holding ``train.rec``) -> (rec, idx) paths."""
    path = Path(path)
    if path.is_dir():
        path = path / "train"
    if path.suffix in (".rec", ".idx"):
        path = path.with_suffix("")
    return Path(f"{path}.rec"), Path(f"{path}.idx")


def read_index(idx_path: Path) -> dict[int, int]:
    """Parse ``key<TAB>offset`` lines into ``{key: offset}`` (file order kept); errors name the line."""
    if not idx_path.is_file():
        raise FileNotFoundError(f"index {idx_path} does not exist: rebuild it with "
                                f"marginface.data.recordio.rebuild_index({str(idx_path)[:-4]!r}.rec)")
    index: dict[int, int] = {}
    at_offset: dict[int, int] = {}  # offset -> key: two keys at one offset read the same record
    with idx_path.open("r", encoding="ascii") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            try:
                key, offset = int(fields[0]), int(fields[1])
            except (ValueError, IndexError):
                raise ValueError(f"{idx_path}:{number}: expected 'key<TAB>offset', got {line.strip()!r}") from None
            if key in index or offset in at_offset:
                what = f"key {key} again" if key in index else f"offset {offset} again (also key {at_offset[offset]})"
                raise ValueError(f"{idx_path}:{number}: {what}: the .idx is damaged (one key would read another "
                                 "key's image); rebuild it with marginface.data.recordio.rebuild_index()")
            index[key], at_offset[offset] = offset, key
    return index


class RecordFile:
    """Random access to the records of one ``.rec`` through its ``.idx``; safe to use from forked workers.

    Reads use ``os.pread`` (no shared file position), and the file is reopened after a fork so DataLoader
    workers never share a descriptor.
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path) -> None:
        self._fd: int | None = None
        self._pid = -1
        self.rec_path, self.idx_path = Path(rec_path), Path(idx_path)
        if not self.rec_path.is_file():
            raise FileNotFoundError(f"record file {self.rec_path} does not exist")
        self.index = read_index(self.idx_path)
        self.size = self.rec_path.stat().st_size
        self._spans = self._compute_spans()
        self._check_ends()

    def _compute_spans(self) -> dict[int, int]:
        """key -> bytes from its offset to the next record's offset (or the end of file)."""
        keys = sorted(self.index, key=self.index.__getitem__)
        offsets = [self.index[key] for key in keys] + [self.size]
        bad = [key for key in keys if not 0 <= self.index[key] < self.size]
        if bad:
            raise ValueError(f"{self.idx_path} points past the end of {self.rec_path} ({self.size} bytes) for keys "
                             f"{bad[:5]}: the .idx does not belong to this .rec (or the .rec is truncated); "
                             f"rebuild it with rebuild_index({str(self.rec_path)!r})")
        return {key: offsets[i + 1] - offsets[i] for i, key in enumerate(keys)}

    def _check_ends(self) -> None:
        """Read the first and the last record now, so a truncated file or foreign .idx fails at open."""
        if self.index:
            ordered = sorted(self.index, key=self.index.__getitem__)
            self.read(ordered[0])
            self.read(ordered[-1])

    def _pread(self, length: int, offset: int) -> bytes:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.rec_path, os.O_RDONLY | getattr(os, "O_BINARY", 0)), os.getpid()
        if hasattr(os, "pread"):
            return os.pread(self._fd, length, offset)
        os.lseek(self._fd, offset, os.SEEK_SET)  # Windows has no pread; one descriptor per process
        return os.read(self._fd, length)

    def read(self, key: int) -> bytes:
        """The data of record ``key`` (parts joined), without the framing."""
        if key not in self.index:
            raise KeyError(f"record {key} is not in {self.idx_path} ({len(self.index)} records)")
        offset, span = self.index[key], self._spans[key]
        blob = self._pread(span, offset) if span <= _ONE_READ_LIMIT else b""
        return self._parse(blob, offset, key)

    def _parse(self, blob: bytes, offset: int, key: int) -> bytes:
        """Walk the parts of the record at ``offset``; ``blob`` is what was read ahead (may be short)."""
        parts, pos = [], 0
        while True:
            head = self._slice(blob, offset, pos, 8)
            magic, lrec = struct.unpack("<II", head) if len(head) == 8 else (None, 0)
            if magic != MAGIC:
                raise self._error(key, offset + pos, "there is no record there (wrong magic number or truncated)")
            cflag, length = lrec >> 29, lrec & _LENGTH_MASK
            if cflag not in ((0, 1) if not parts else (2, 3)):
                raise self._error(key, offset + pos, f"a record part has continuation flag {cflag} out of order")
            if offset + pos + 8 + length > self.size:
                raise self._error(key, offset + pos, f"the record needs {length} bytes but the file ends first "
                                                     "(truncated .rec)")
            parts.append(self._slice(blob, offset, pos + 8, length))
            pos += 8 + length + (-length % 4)
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(parts)

    def _slice(self, blob: bytes, offset: int, start: int, length: int) -> bytes:
        """``length`` bytes at ``offset + start``: from the read-ahead ``blob`` when it has them."""
        if len(blob) >= start + length:
            return blob[start:start + length]
        return self._pread(length, offset + start)

    def _error(self, key: int, offset: int, what: str) -> ValueError:
        return ValueError(
            f"{self.idx_path} says record {key} is at offset {self.index[key]} of {self.rec_path}, but at byte "
            f"{offset} {what}: the .rec is damaged or the .idx does not belong to it; re-copy the .rec or "
            f"rebuild the index with marginface.data.recordio.rebuild_index({str(self.rec_path)!r})"
        )

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __getstate__(self) -> dict:
        # descriptors do not travel to spawned workers; each process opens its own
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self) -> None:
        self.close()


def iter_records(rec_path: str | Path) -> Iterator[tuple[int, bytes]]:
    """Sequential scan: yield ``(offset, data)`` for every record of a ``.rec``, no ``.idx`` needed."""
    rec_path = Path(rec_path)
    with rec_path.open("rb") as stream:
        offset = 0
        while True:
            start, parts = offset, []
            while True:
                head = stream.read(8)
                if not head:
                    if parts:
                        raise ValueError(f"{rec_path} ends inside a multi-part record at byte {start} (truncated)")
                    return
                magic, lrec = struct.unpack("<II", head) if len(head) == 8 else (None, 0)
                if magic != MAGIC:
                    raise ValueError(f"{rec_path}: no record at byte {offset} (wrong magic or truncated)")
                length = lrec & _LENGTH_MASK
                body = stream.read(length + (-length % 4))
                if len(body) < length:
                    raise ValueError(f"{rec_path}: the record at byte {offset} needs {length} bytes but the file "
                                     f"ends after {len(body)} (truncated .rec)")
                parts.append(body[:length])
                offset += 8 + len(body)
                if lrec >> 29 in (0, 3):
                    break
            yield start, _MAGIC_BYTES.join(parts)


def rebuild_index(rec_path: str | Path, idx_path: str | Path | None = None) -> Path:
    """Write a fresh ``.idx`` for ``rec_path`` by scanning it: record n gets key n (insightface numbering).

    A truncated tail raises (the file must be re-copied); a complete file always gets a consistent index.
    """
    from tqdm.auto import tqdm

    rec_path = Path(rec_path)
    idx_path = Path(idx_path) if idx_path else split_prefix(rec_path)[1]
    lines = [f"{key}\t{offset}\n" for key, (offset, _) in
             enumerate(tqdm(iter_records(rec_path), desc=f"indexing {rec_path.name}", unit="rec", leave=False))]
    idx_path.write_text("".join(lines), encoding="ascii")
    return idx_path


class RecordWriter:
    """Append records to ``prefix.rec`` and their offsets to ``prefix.idx``. Use as a context manager."""

    def __init__(self, out_prefix: str | Path) -> None:
        self.rec_path, self.idx_path = split_prefix(out_prefix)
        self.rec_path.parent.mkdir(parents=True, exist_ok=True)
        self._rec = self.rec_path.open("wb")
        self._idx = self.idx_path.open("w", encoding="ascii")
        self.count = 0

    def write(self, key: int, data: bytes) -> None:
        """Write record data (already ``pack``-ed) under ``key``."""
        self._idx.write(f"{key}\t{self._rec.tell()}\n")
        self._rec.write(frame(data))
        self.count += 1

    def close(self) -> None:
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def label_of(header: IRHeader, source: str = "record") -> int:
    """The class of an image record; a NaN / inf / fractional label is an error naming ``source``."""
    value = float(header.label) if header.flag == 0 else float(header.label[0])
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"{source} has label {value}, not a class index: the record is damaged; re-pack the .rec")
    return int(value)


class RecordIODataset(Dataset):
    """insightface ``.rec``/``.idx`` as a torch Dataset of ``((3, 112, 112) float32 in [-1, 1], label)``.

    Args:
        path: the prefix (``data/train``), the ``.rec`` path, or the folder holding ``train.rec``.
        transform: applied to the normalised ``(3, H, W)`` tensor (e.g. ``RandomHorizontalFlip()``).
        image_size, resize, decoder: as in :class:`~marginface.data.folder.FolderDataset`.

    ``num_classes`` comes from the identity records of header 0, else from an insightface ``property`` file
    beside the ``.rec``, else from a scan of every label (with a progress bar).
    """

    def __init__(
        self,
        path: str | Path,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        image_size: int = 112,
        resize: bool = False,
        decoder: str = "auto",
    ) -> None:
        rec_path, idx_path = split_prefix(path)
        self.records = RecordFile(rec_path, idx_path)
        self.transform, self.image_size, self.resize, self.decoder = transform, image_size, resize, decoder
        self.keys, identity_keys = self._layout()
        if not self.keys:
            raise ValueError(f"{rec_path} holds no image records")
        self.num_classes = len(identity_keys) or self._property_classes() or self._scan_classes()

    def _layout(self) -> tuple[Sequence[int], Sequence[int]]:
        """(image keys, identity-record keys) from header 0, or (every key, none) without one."""
        index = self.records.index
        if 0 in index:
            header, _ = unpack(self.records.read(0), f"record 0 of {self.records.rec_path}")
            if header.flag > 0:
                first_id, end = int(header.label[0]), int(header.label[1]) if header.flag > 1 else 0
                images, identities = range(1, first_id), range(first_id, max(end, first_id))
                missing = [key for key in (*images, *identities) if key not in index]
                if missing:
                    raise ValueError(f"header 0 of {self.records.rec_path} lists records 1..{len(images)} (images) "
                                     f"and {first_id}..{end - 1} (identities) but {self.records.idx_path} lacks "
                                     f"{len(missing)} of them (first {missing[:5]}): the .idx does not belong to "
                                     f"this .rec; rebuild it with rebuild_index()")
                return images, identities
        return list(index), []

    def _property_classes(self) -> int:
        prop = self.records.rec_path.parent / "property"
        if prop.is_file():
            return int(prop.read_text().split(",")[0])
        return 0

    def _scan_classes(self) -> int:
        from tqdm.auto import tqdm

        rec = self.records.rec_path
        labels = (label_of(self.read_record(i)[0], f"record {self.keys[i]} of {rec}")
                  for i in tqdm(range(len(self)), desc="scanning labels", unit="rec", leave=False))
        return max(labels) + 1

    def __len__(self) -> int:
        return len(self.keys)

    def read_record(self, index: int) -> tuple[IRHeader, bytes]:
        """(IRHeader, encoded image) of sample ``index``."""
        key = self.keys[index]
        return unpack(self.records.read(key), f"record {key} of {self.records.rec_path}")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from marginface.data.decode import decode_image
        from marginface.data.folder import check_size
        from marginface.data.transforms import to_tensor

        header, payload = self.read_record(index)
        source = f"record {self.keys[index]} of {self.records.rec_path}"
        image = check_size(decode_image(payload, source, self.decoder), source, self.image_size, self.resize)
        tensor = to_tensor(image)
        if self.transform is not None:
            tensor = self.transform(tensor)
        label = label_of(header, source)
        if not 0 <= label < self.num_classes:
            raise ValueError(f"{source} has label {label}, outside [0, {self.num_classes}) (the dataset's classes): "
                             "the record is damaged or was written with other labels; re-pack the .rec")
        return tensor, label


class PackStats(NamedTuple):
    """What :func:`write_recordio` wrote: paths, counts and the files it left out."""

    rec_path: Path
    idx_path: Path
    num_images: int
    num_classes: int
    reencoded: int
    skipped: list[Path]


def write_recordio(source, out_prefix: str | Path, skip_bad: bool = False, quality: int = 95) -> PackStats:
    """Pack a folder dataset into insightface ``out_prefix.rec`` / ``.idx`` (+ ``out_prefix.classes.json``).

    Layout as insightface's: record 0 = header ``(N+1, N+1+C)``, keys ``1..N`` the images grouped by label
    (label as a scalar float), keys ``N+1..N+C`` one record per identity holding its image range
    ``(start, end)``. JPEG/PNG files of the right size are stored byte for byte; others (resized, or in a
    format insightface's cv2-based readers may not open) are re-encoded (JPEG at ``quality``; PNG if lossless
    input such as PNG/BMP/PGM).

    Args:
        source: a :class:`~marginface.data.folder.FolderDataset` or the root folder of one.
        out_prefix: where to write, e.g. ``data/train`` -> ``data/train.rec``, ``data/train.idx``.
        skip_bad: when ``source`` is a folder path, skip (and report) bad files instead of raising.
    """
    from marginface.data.folder import FolderDataset

    dataset = source if isinstance(source, FolderDataset) else FolderDataset(source, skip_bad=skip_bad)
    if dataset.num_classes >= 1 << 24:
        raise ValueError(f"{dataset.num_classes} classes: float32 labels are exact only below 2**24")
    writer = RecordWriter(out_prefix)
    try:
        reencoded = _write_all(writer, dataset, quality)
    except BaseException:
        writer.close()  # no half-written pair left behind to be mistaken for a data set
        writer.rec_path.unlink(missing_ok=True)
        writer.idx_path.unlink(missing_ok=True)
        raise
    writer.close()
    dataset.save_class_map(f"{writer.rec_path.with_suffix('')}.classes.json")
    return PackStats(writer.rec_path, writer.idx_path, writer.count - 1 - dataset.num_classes,
                     dataset.num_classes, reencoded, list(dataset.skipped))


def _write_all(writer: RecordWriter, dataset, quality: int) -> int:
    """Header 0, the images (keys 1..N), one range record per identity (keys N+1..N+C); returns #re-encoded."""
    from tqdm.auto import tqdm

    order = sorted(range(len(dataset)), key=lambda i: dataset.samples[i][1])  # stable: grouped by label
    n, num_classes, reencoded, ranges = len(order), dataset.num_classes, 0, {}
    writer.write(0, pack(IRHeader(0, [n + 1.0, n + 1.0 + num_classes], 0, 0), b""))
    for key, i in enumerate(tqdm(order, desc=f"packing {writer.rec_path.name}", unit="img"), start=1):
        payload, label, changed = _encoded_sample(dataset, i, quality)
        reencoded += changed
        ranges[label] = (ranges.get(label, (key,))[0], key + 1)
        writer.write(key, pack(IRHeader(0, float(label), key, 0), payload))
    for label in range(num_classes):
        start, end = ranges.get(label, (n + 1, n + 1))  # an identity without images: empty range
        writer.write(n + 1 + label, pack(IRHeader(0, [float(start), float(end)], 0, 0), b""))
    return reencoded


def _encoded_sample(dataset, index: int, quality: int) -> tuple[bytes, int, bool]:
    """(bytes to store, label, whether they were re-encoded) for sample ``index`` of a FolderDataset."""
    import cv2

    from marginface.data.decode import decode_image, is_jpeg
    from marginface.data.folder import check_size

    data, label = dataset.read_bytes(index)
    source = str(dataset.samples[index][0])
    decoded = decode_image(data, source, dataset.decoder)  # validates every file before it is packed
    image = check_size(decoded, source, dataset.image_size, dataset.resize)
    is_png = data[:8] == b"\x89PNG\r\n\x1a\n"
    if image is decoded and (is_jpeg(data) or is_png):
        return data, label, False
    lossy = is_jpeg(data) or image is not decoded
    ext, params = (".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality]) if lossy else (".png", [])
    ok, buffer = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"could not re-encode {source} as {ext}")
    return buffer.tobytes(), label, True
