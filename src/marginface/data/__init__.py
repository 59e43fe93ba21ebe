"""marginface.data: face datasets yielding ``(image (3, 112, 112) float32 in [-1, 1], label)``.

- :class:`FolderDataset`: ``root/<identity>/<image>``;
- :class:`RecordIODataset` / :func:`write_recordio`: insightface ``.rec``/``.idx``, no mxnet;
- :mod:`marginface.data.bins`: insightface verification ``.bin`` files, read through a restricted unpickler;
- :class:`SyntheticFaces` / :func:`synthetic_splits`: the embedded synthetic identities;
- :mod:`marginface.data.transforms` and :mod:`marginface.data.decode`: normalisation, flip, fast decoding;
- :mod:`marginface.data.images` (user photos -> RGB, pixel limit), :mod:`marginface.data.pairs` (LFW
  ``pairs.txt``), :mod:`marginface.data.lists` (plain list files: cleaning writes them, training reads them).
"""

from marginface.data.bins import load_verification_bin, read_verification_bin, write_verification_bin
from marginface.data.folder import FolderDataset
from marginface.data.recordio import RecordIODataset, write_recordio
from marginface.data.synthetic import SyntheticFaces, synthetic_splits

__all__ = [
    "FolderDataset",
    "RecordIODataset",
    "SyntheticFaces",
    "load_verification_bin",
    "read_verification_bin",
    "synthetic_splits",
    "write_recordio",
    "write_verification_bin",
]
