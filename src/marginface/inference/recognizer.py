"""``FaceRecognizer``: photos in, L2-normalised embeddings out; verify two photos, identify against a gallery.

Inputs (``embed``, ``verify``, ``identify`` accept any mix): image paths, PIL images, (H, W, 3) / (H, W) uint8
(or uint16) arrays, and (B, 3, S, S) / (3, S, S) tensors of **RGB pixels in 0..255** (not normalised: the
card's normalisation is applied inside, so training/deployment mix-ups cannot happen).

The aligned-input rule: an image that is exactly S x S pixels (S = the card's input size, 112) is taken as an
already-aligned face and is **not** re-detected; tensors are always aligned faces. Every other image is a raw
photo: EXIF orientation applied, converted to 8-bit RGB (:mod:`~marginface.data.images`), faces detected
(MTCNN by default), one face chosen by the ``marginface align`` policy (``centre``, ``largest`` or ``score``;
see :func:`marginface.align.detectors.select_face`), warped onto the ArcFace template. ``aligned=True`` /
``False`` overrides the rule for every input of a call. A photo without a face raises
:class:`~marginface.errors.NoFaceError` naming it; a photo with several faces yields the chosen one, and the
:class:`FaceInfo` of that input records how many were found and why that one was kept.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from marginface.data.images import describe, read_photo, to_rgb_array
from marginface.errors import NoFaceError, UserError
from marginface.inference.threads import default_threads
from marginface.models.load import load_model
from marginface.models.loaded import LoadedModel

if TYPE_CHECKING:
    from marginface.inference.gallery import Gallery, Match


@dataclass
class FaceInfo:
    """How one input became a face crop.

    Attributes:
        input: the input's name (its path, or its type and position).
        aligned_input: True when the input was taken as an already-aligned crop (not detected).
        faces: faces detected (0 for aligned inputs).
        kept: why the face used was chosen (``"only"``, ``"largest containing the centre"``, ...).
        box: (4,) x1, y1, x2, y2 pixels of the face used (None for aligned inputs).
        score: detector confidence of the face used (None for aligned inputs).
    """

    input: str
    aligned_input: bool
    faces: int = 0
    kept: str = "aligned input"
    box: list[float] | None = None
    score: float | None = None

    @property
    def several(self) -> bool:
        return self.faces > 1


@dataclass
class Verification:
    """Result of :meth:`FaceRecognizer.verify`; unpacks as ``score, same = result``.

    Attributes:
        score: cosine similarity of the two embeddings, in [-1, 1].
        same: ``score >= threshold``.
        threshold: the threshold used (the card's calibrated default unless one was passed).
        faces: the :class:`FaceInfo` of each input.
    """

    score: float
    same: bool
    threshold: float
    faces: list[FaceInfo] = field(default_factory=list)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.score, self.same))


class FaceRecognizer:
    """A loaded model plus the detect-and-align front end. See the module docstring for the input rules.

    Args:
        model: a :class:`~marginface.models.LoadedModel`.
        detector: detector registry name (:func:`marginface.align.detectors.create_detector`).
        policy: face kept when a photo holds several: ``centre`` (default, as ``marginface align``),
            ``largest`` or ``score``.
        min_face: smallest face searched, pixels (MTCNN); smaller faces are not found (→ NoFaceError).
        batch_size: faces per forward pass.
        max_side: working size for large photos (None: off, every photo at full size). A JPEG file longer than
            this is decoded at 1/2, 1/4 or 1/8 size by DCT scaling (never below ``max_side``), MTCNN runs on a
            copy shrunk to ``max_side`` and its landmarks are mapped back; the face is warped from the decoded
            photo and ``FaceInfo.box`` is in the file's pixels. Faces under about
            ``12 * longer side / max_side`` pixels of the file are then not searched.
        threads: intra-op threads of a torch model, set process-wide (``torch.set_num_threads``); default
            :func:`~marginface.inference.threads.default_threads` (``$MARGINFACE_THREADS``, else min(physical
            cores, 4) less the busy ones); 0 leaves torch's setting alone.
    """

    def __init__(self, model: LoadedModel, *, detector: str = "mtcnn", policy: str = "centre",
                 min_face: float = 20.0, batch_size: int = 64, max_side: int | None = None,
                 threads: int | None = None) -> None:
        if policy not in ("centre", "largest", "score"):
            raise ValueError(f"unknown face policy {policy!r}; use 'centre', 'largest' or 'score'")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        size = int(model.card.input.size)
        if max_side is not None and max_side <= size:
            raise ValueError(f"max_side must be None or more than the face size {size} (a photo decoded at "
                             f"{size}x{size} would be taken for an aligned face), got {max_side}")
        self.model, self.detector_name, self.policy = model, detector, policy
        self.min_face, self.batch_size, self.max_side = float(min_face), int(batch_size), max_side
        self._detector: Any = None
        self.threads = default_threads() if threads is None else int(threads)
        if self.threads and model.kind == "torch":
            torch.set_num_threads(self.threads)  # torch's default (one per logical core) stalls on busy machines

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu", threads: int | None = None,
             **kwargs: Any) -> FaceRecognizer:
        """Load the model at ``path`` (:func:`~marginface.models.load_model`); ``kwargs`` go to
        the constructor (``detector``, ``policy``, ``min_face``, ``batch_size``, ``max_side``). ``threads``: see
        the class (an ONNX model's onnxruntime session gets them too)."""
        threads = default_threads() if threads is None else int(threads)
        return cls(load_model(path, device=device, threads=threads), threads=threads, **kwargs)

    @property
    def card(self):  # noqa: ANN201 (ModelCard)
        return self.model.card

    @property
    def size(self) -> int:
        return int(self.card.input.size)

    # ------------------------------------------------------------------------------------------ faces
    def detector(self) -> Any:
        """The face detector, built on first use (the align extra is only needed for raw photos)."""
        if self._detector is None:
            from marginface.align.detectors import create_detector

            kwargs = {"min_face": self.min_face, "max_side": self.max_side} \
                if self.detector_name.startswith("mtcnn") else {}
            self._detector = create_detector(self.detector_name, **kwargs)
        return self._detector

    def faces(self, inputs: Any, aligned: bool | None = None) -> Iterator[tuple[np.ndarray, FaceInfo]]:
        """Yield ``((3, S, S) float32 RGB 0..255 crop, FaceInfo)`` per face, in input order."""
        for index, item in enumerate(_as_list(inputs)):
            if isinstance(item, torch.Tensor):
                yield from self._tensor_faces(item, index)
            else:
                yield self._image_face(item, index, aligned)

    def _tensor_faces(self, tensor: torch.Tensor, index: int) -> Iterator[tuple[np.ndarray, FaceInfo]]:
        name = f"input #{index} (tensor)"
        batch = tensor.detach().to("cpu", torch.float32)
        batch = batch[None] if batch.ndim == 3 else batch
        if batch.ndim != 4 or tuple(batch.shape[1:]) != (3, self.size, self.size):
            raise ValueError(f"{name}: tensors must be aligned faces (B, 3, {self.size}, {self.size}) or "
                             f"(3, {self.size}, {self.size}), got {tuple(tensor.shape)}")
        if batch.numel() and (batch.min() < 0 or batch.max() > 255):
            raise ValueError(f"{name}: tensor values span [{float(batch.min()):.3g}, {float(batch.max()):.3g}]; "
                             "pass RGB pixels in 0..255 (the card's normalisation is applied here)")
        for i, crop in enumerate(batch.numpy()):
            yield crop, FaceInfo(f"{name}[{i}]", True)

    def _image_face(self, item: Any, index: int, aligned: bool | None) -> tuple[np.ndarray, FaceInfo]:
        name = describe(item, index)
        rgb, scale = read_photo(item, name, self.max_side) if self.max_side else (to_rgb_array(item, name), 1.0)
        is_aligned = rgb.shape[:2] == (self.size, self.size) if aligned is None else aligned
        if is_aligned:
            if rgb.shape[:2] != (self.size, self.size):
                raise ValueError(f"{name}: aligned=True but the image is {rgb.shape[1]}x{rgb.shape[0]}, "
                                 f"not {self.size}x{self.size}")
            return _chw(rgb), FaceInfo(name, True)
        return self._detect_and_align(rgb, name, scale)

    def _detect_and_align(self, rgb: np.ndarray, name: str, scale: float = 1.0) -> tuple[np.ndarray, FaceInfo]:
        """Detect, choose, warp. ``scale``: file pixels per ``rgb`` pixel (DCT-reduced decode), for the box."""
        from marginface.align.detectors import select_face
        from marginface.align.template import warp_face

        found = self.detector().detect(rgb)
        if not len(found):
            raise NoFaceError(f"no face found in {name} ({rgb.shape[1]}x{rgb.shape[0]} pixels; faces under "
                              f"{self.min_face:g} px are not searched): use a photo with a visible face, lower "
                              "min_face, or pass an aligned 112x112 crop")
        chosen, reason = select_face(found, rgb.shape, self.policy)
        crop = warp_face(rgb, found.landmarks[chosen], self.size)
        box = (found.boxes[chosen] + 0.5) * scale - 0.5 if scale != 1.0 else found.boxes[chosen]
        info = FaceInfo(name, False, len(found), reason, [float(v) for v in box], float(found.scores[chosen]))
        return _chw(crop), info

    # ------------------------------------------------------------------------------------------ embeddings
    def embed_with_info(self, inputs: Any, aligned: bool | None = None, flip: bool | None = None,
                        progress: bool = False) -> tuple[np.ndarray, list[FaceInfo]]:
        """Embeddings (N, D) float32, L2-normalised, one per face, and the FaceInfo of each.

        Faces are embedded ``batch_size`` at a time as they are aligned (memory stays O(batch)).
        ``flip``: flip TTA (default: the card's ``input.flip_tta``).
        """
        chunks, infos, crops = [], [], []
        stream = self.faces(inputs, aligned)
        if progress:
            from tqdm import tqdm

            stream = tqdm(stream, total=_count(inputs), desc="embed", unit="face")
        for crop, info in stream:
            crops.append(crop)
            infos.append(info)
            if len(crops) == self.batch_size:
                chunks.append(self.model.embed_pixels(np.stack(crops), flip))
                crops = []
        if crops:
            chunks.append(self.model.embed_pixels(np.stack(crops), flip))
        if not chunks:
            raise ValueError("no inputs to embed")
        return np.concatenate(chunks).astype(np.float32, copy=False), infos

    def embed(self, inputs: Any, aligned: bool | None = None, flip: bool | None = None) -> np.ndarray:
        """(N, D) float32 L2-normalised embeddings of ``inputs`` (see the module docstring)."""
        return self.embed_with_info(inputs, aligned, flip)[0]

    # ------------------------------------------------------------------------------------------ decisions
    def verify(self, a: Any, b: Any, threshold: float | None = None) -> Verification:
        """Are ``a`` and ``b`` (one image each) the same person? ``score >= threshold`` decides.

        Raises:
            FileNotFoundError, IsADirectoryError, ValueError, NoFaceError: an input that is missing, a folder,
                not an image, or a photo without a face (checked first: these are what the user fixes first).
            UserError: no ``threshold`` passed and the card has none calibrated.
        """
        vectors, infos = self.embed_with_info([_single(a, "a"), _single(b, "b")])
        if threshold is None:
            threshold = self.card.threshold
        if threshold is None:
            raise UserError(f"the model {self.model.path} has no calibrated threshold: run "
                            f"marginface calibrate {self.model.path} --pairs ... --far 1e-3 first, "
                            "or pass a threshold (verify `threshold=T`)")
        # clipped: two float32 unit vectors can have a float64 dot a few ulps above 1
        score = float(np.clip(np.dot(vectors[0].astype(np.float64), vectors[1].astype(np.float64)), -1, 1))
        return Verification(score, score >= threshold, float(threshold), infos)

    def identify(self, image: Any, gallery: Gallery, k: int = 5) -> tuple[list[Match], FaceInfo]:
        """Top-``k`` gallery identities for the face in ``image``: (matches best first, the FaceInfo)."""
        vectors, infos = self.embed_with_info([_single(image, "image")])
        matches = gallery.search(vectors, k, model=self.card)[0]
        return matches, infos[0]


def _chw(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)


def _as_list(inputs: Any) -> Sequence[Any]:
    """One input or a sequence of them -> a list (a single path/PIL image/(H, W[, C]) array/tensor is one input;
    an (N, H, W, C) array is N images)."""
    if isinstance(inputs, list | tuple):
        return inputs
    if isinstance(inputs, np.ndarray) and inputs.ndim == 4:
        return list(inputs)
    return [inputs]


def _single(item: Any, name: str) -> Any:
    batched = isinstance(item, torch.Tensor | np.ndarray) and item.ndim == 4 and len(item) != 1
    if isinstance(item, list | tuple) or batched:
        raise ValueError(f"{name}: pass one image, not a sequence")
    return item


def _count(inputs: Any) -> int | None:
    items = _as_list(inputs)
    if any(isinstance(i, torch.Tensor) for i in items):
        return None
    return len(items)
