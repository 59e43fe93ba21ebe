"""A damaged .idx or .rec is an error naming the file, never another image or label returned silently."""

import struct

import pytest

from marginface.data.recordio import RecordIODataset, read_index
from tests.data.helpers import face
from tests.data.test_recordio import _handmade, _png


def _record(label: float, key: int) -> bytes:
    return struct.pack("<IfQQ", 0, label, key, 0) + _png(face(key, 0))


def test_duplicate_key_or_offset_in_idx_is_refused(tmp_path):
    prefix = _handmade(tmp_path, [(1, _record(0.0, 1)), (2, _record(1.0, 2))])
    idx = tmp_path / "hand.idx"
    lines = idx.read_text().splitlines()
    idx.write_text(f"{lines[0]}\n{lines[1]}\n1\t{lines[1].split()[1]}\n")
    with pytest.raises(ValueError, match=r"hand.idx:3: key 1 again: the .idx is damaged"):
        read_index(idx)
    idx.write_text(f"{lines[0]}\n2\t{lines[0].split()[1]}\n")  # key 2 reads key 1's image
    with pytest.raises(ValueError, match=r"hand.idx:2: offset 0 again \(also key 1\)"):
        RecordIODataset(prefix)


@pytest.mark.parametrize(("label", "message"), [
    (1e9, r"record 2 of .*hand.rec has label 1000000000, outside \[0, 2\)"),
    (-1.0, r"record 2 of .*hand.rec has label -1, outside \[0, 2\)"),
    (float("nan"), r"record 2 of .*hand.rec has label nan, not a class index"),
    (1.5, r"record 2 of .*hand.rec has label 1.5, not a class index"),
])
def test_bad_label_names_the_record_and_file(tmp_path, label, message):
    (tmp_path / "property").write_text("2,112,112")  # the classes are known: the label is what is wrong
    prefix = _handmade(tmp_path, [(1, _record(0.0, 1)), (2, _record(label, 2))])
    dataset = RecordIODataset(prefix)
    assert dataset[0][1] == 0
    with pytest.raises(ValueError, match=message):
        dataset[1]
