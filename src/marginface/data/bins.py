"""insightface verification ``.bin`` files (lfw.bin, cfp_fp.bin, agedb_30.bin, ...), read safely and written.

A ``.bin`` is a pickle of ``(images, issame)``: ``images`` a list of ``2N`` encoded images (JPEG/PNG) and
``issame`` a list of ``N`` bools; pair ``i`` is images ``2i`` and ``2i+1``. Files written by Python 2 hold
the images as ``str`` (read back as ``bytes`` with ``encoding="bytes"``), newer ones as ``bytes`` or as uint8
numpy arrays (``../shared/data/bins/small_lfw.bin``).

Pickle can run arbitrary code, so files are read with :class:`SafeUnpickler`, which resolves only the few
globals that numpy array reconstruction needs; any other global (``os.system``, ``builtins.eval``...) is
refused before anything is called.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marginface.files import atomic_write

# (module, name) pairs a verification .bin may reference. Checked with pickletools on small_lfw.bin
# (numpy.core.multiarray._reconstruct, numpy.ndarray, numpy.dtype); numpy >= 2 writes numpy._core...;
# numpy scalars (np.bool_ labels) go through multiarray.scalar; Python 3 protocol-2 pickles spell bytes as
# _codecs.encode(str, "latin1"); bytearray is a plain container. None of these can execute code.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("builtins", "bytes"),
        ("builtins", "bytearray"),
        ("__builtin__", "bytearray"),
    }
)


#: the most bytes a constructor call in a .bin may allocate from a *number* in the file (``bytearray(n)``,
#: ``bytes(n)``, ``_reconstruct``'s shape). Real files never do it (numpy pickles reconstruct shape (0,) and then
#: fill the array from the data that follows; bytes come as data): sizes carried by data are bounded by the file.
MAX_PICKLE_ALLOCATION = 1 << 20


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle referenced a global outside :data:`ALLOWED_GLOBALS`, or asked one to allocate more than
    :data:`MAX_PICKLE_ALLOCATION` bytes from a number."""


def _bounded(call: Any, source: str, name: str) -> Any:
    """``call`` (an allowed global) that refuses arguments asking it to allocate from a number: ``bytearray(10**9)``
    is a 39-byte pickle that costs a gigabyte."""

    def checked(*args: Any, **kwargs: Any) -> Any:
        size = _requested_bytes(name, args)
        if size > MAX_PICKLE_ALLOCATION:
            raise UnsafePickleError(
                f"refusing {name}(...) asking for {size:,} bytes in {source}: a verification .bin never allocates "
                f"from a number (limit marginface.data.bins.MAX_PICKLE_ALLOCATION = {MAX_PICKLE_ALLOCATION:,} "
                "bytes); the file was crafted or is not a .bin")
        if name == "encode" and len(args) > 1 and str(args[1]).replace("-", "").replace("_", "").lower() not in (
                "latin1", "iso88591"):
            raise UnsafePickleError(f"refusing _codecs.encode(..., {args[1]!r}) in {source}: only latin1 is used")
        return call(*args, **kwargs)

    return checked


def _requested_bytes(name: str, args: tuple) -> int:
    """Bytes a call would allocate from numbers among its arguments (0 when the size comes from data)."""
    if name in ("bytes", "bytearray") and args and isinstance(args[0], int):
        return int(args[0])
    if name == "_reconstruct" and len(args) > 1:
        shape = args[1] if isinstance(args[1], tuple | list) else (args[1],)
        try:
            return int(np.prod([int(d) for d in shape], dtype=object)) * 16  # 16: the widest numpy scalar
        except (TypeError, ValueError):
            return 0
    return 0


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only :data:`ALLOWED_GLOBALS`."""

    def __init__(self, file: io.BufferedIOBase, source: str, **kwargs: str) -> None:
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str) -> type:
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"refusing to unpickle {module}.{name} from {self.source}: a verification .bin holds only "
                "encoded images and bools, so this file is either not a .bin or was crafted to run code"
            )
        if module.startswith("numpy.core.") and int(np.__version__.split(".")[0]) >= 2:
            # numpy 2 moved numpy.core to numpy._core; importing the old name only emits a deprecation warning
            module = "numpy._core." + module.removeprefix("numpy.core.")
        found = super().find_class(module, name)
        if name in ("bytes", "bytearray", "_reconstruct", "encode"):
            return _bounded(found, self.source, name)
        return found


def _safe_load(path: Path) -> object:
    data = path.read_bytes()
    try:
        return SafeUnpickler(io.BytesIO(data), str(path)).load()
    except UnicodeDecodeError:
        # Python 2 pickles hold raw bytes as str; decoding them as bytes is what insightface does
        return SafeUnpickler(io.BytesIO(data), str(path), encoding="bytes").load()


def read_verification_bin(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """Read a ``.bin`` safely -> (``2N`` encoded images as bytes, ``issame`` bool array ``(N,)``).

    Raises:
        FileNotFoundError: no such file.
        UnsafePickleError: the pickle references anything beyond numpy array reconstruction.
        ValueError: the content is not ``(list of 2N encoded images, N bools)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"verification file {path} does not exist")
    try:
        content = _safe_load(path)
    except UnsafePickleError:
        raise
    except Exception as error:  # truncated/garbled pickles raise many types
        raise ValueError(f"{path} is not a readable verification .bin pickle: {error}") from error
    return _validate(content, path)


def _validate(content: object, path: Path) -> tuple[list[bytes], np.ndarray]:
    if not (isinstance(content, (tuple, list)) and len(content) == 2):
        raise ValueError(f"{path}: expected a pickled (images, issame) pair, got {type(content).__name__}")
    raw_images, raw_issame = content
    images = [_as_bytes(item, path, i) for i, item in enumerate(raw_images)]
    issame = np.asarray(raw_issame)
    if issame.ndim != 1 or issame.dtype.kind not in "bui":
        raise ValueError(f"{path}: issame must be a flat list of bools, got dtype {issame.dtype} shape {issame.shape}")
    if len(images) != 2 * len(issame):
        raise ValueError(f"{path}: {len(images)} images for {len(issame)} pairs; a .bin holds 2 images per pair")
    return images, issame.astype(bool)


def _as_bytes(item: object, path: Path, index: int) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim <= 2:
        return item.tobytes()  # cv2.imencode buffers are (L, 1); the bytes are what matters
    raise ValueError(f"{path}: image {index} is a {type(item).__name__} {getattr(item, 'dtype', '')}"
                     f"{getattr(item, 'shape', '')}, expected encoded image bytes or a uint8 buffer")


def write_verification_bin(path: str | Path, images: Sequence[bytes], issame: Sequence[bool] | np.ndarray) -> Path:
    """Write ``(images, issame)`` as an insightface ``.bin`` (images as ``bytes``, issame as Python bools).

    Args:
        images: ``2N`` encoded images (JPEG/PNG bytes, or uint8 buffers as ``cv2.imencode`` returns).
        issame: ``N`` bools, pair ``i`` = images ``2i``, ``2i+1``.
    """
    path = Path(path)
    flags = np.asarray(issame)
    if flags.ndim != 1 or len(images) != 2 * len(flags):
        raise ValueError(f"need 2N images for N pairs, got {len(images)} images and issame of shape {flags.shape}")
    payload = ([_as_bytes(item, path, i) for i, item in enumerate(images)], [bool(flag) for flag in flags])
    path.parent.mkdir(parents=True, exist_ok=True)
    def dump(tmp: Path) -> None:
        with tmp.open("wb") as stream:
            # protocol 4: bytes stay bytes (no _codecs detour), readable by Python >= 3.4 and insightface's loader
            pickle.dump(payload, stream, protocol=4)

    atomic_write(path, dump)  # a crash mid-write leaves the old file (or none), never half a set
    return path


def load_verification_bin(
    path: str | Path, image_size: int = 112, decoder: str = "auto"
) -> tuple[torch.Tensor, np.ndarray]:
    """Read and decode a ``.bin`` -> (images ``(2N, 3, image_size, image_size)`` float32 in [-1, 1], issame ``(N,)``).

    Images whose size differs from ``image_size`` are an error naming the image (verification sets are
    stored aligned; resizing silently would hide a wrong file).
    """
    encoded, issame = read_verification_bin(path)
    return decode_verification_images(encoded, path, range(len(encoded)), image_size, decoder), issame


def decode_verification_images(
    encoded: Sequence[bytes], path: str | Path, indices: Sequence[int], image_size: int = 112, decoder: str = "auto",
    progress: bool = True,
) -> torch.Tensor:
    """Decode ``encoded[i]`` for ``i`` in ``indices`` (images of the ``.bin`` at ``path``, named in errors) ->
    ``(len(indices), 3, image_size, image_size)`` float32 in [-1, 1]. ``progress``: a (transient) progress bar."""
    from tqdm.auto import tqdm

    from marginface.data.decode import decode_image
    from marginface.data.folder import check_size
    from marginface.data.transforms import to_tensor

    images = np.empty((len(indices), 3, image_size, image_size), dtype=np.float32)
    bar = tqdm(indices, desc=f"decoding {Path(path).name}", unit="img", leave=False, disable=not progress)
    for row, i in enumerate(bar):
        source = f"image {i} of {path}"
        # filled through numpy: a per-row torch copy goes through the intra-op pool, slow on busy CPUs
        images[row] = to_tensor(check_size(decode_image(encoded[i], source, decoder), source, image_size,
                                           False)).numpy()
    return torch.from_numpy(images)
