"""A folder per identity: ``root/<identity>/<image>`` -> ``(image (3, 112, 112) float32 in [-1, 1], label)``.

Labels are the identity folder names sorted by name (``str`` order), numbered from 0; the map is saved and
reloaded as JSON (``{"identity": label}``) so that a second folder (a validation split, a later run) can use
the same numbering. Files directly under ``root`` and hidden entries (names starting with ``.``) are ignored.

Bad input: by default the first problem raises an error that names the file (a corrupt or non-image file,
an image of the wrong size, an empty identity folder). With ``skip_bad=True`` every image is decoded once
up front (with a progress bar), and bad files and empty identity folders are left out and listed in
``.skipped`` (their paths) with the reason in ``.skip_reasons``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from marginface.data.decode import decode_image
from marginface.data.transforms import to_tensor

IMAGE_SIZE = 112
# What PIL/OpenCV read; any other file inside an identity folder is a "non-image file".
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".pbm", ".pnm", ".tif", ".tiff", ".webp", ".gif"}
)

Transform = Callable[[torch.Tensor], torch.Tensor]


def save_class_map(class_to_label: Mapping[str, int], path: str | Path) -> Path:
    """Write ``{"identity": label}`` as JSON (sorted by label) and return the path."""
    path = Path(path)
    ordered = dict(sorted(class_to_label.items(), key=lambda item: item[1]))
    path.write_text(json.dumps(ordered, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def load_class_map(path: str | Path) -> dict[str, int]:
    """Read a map written by :func:`save_class_map`; labels must be exactly ``0 .. C-1``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class map {path} does not exist (write one with save_class_map)")
    mapping = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(mapping, dict) or sorted(mapping.values()) != list(range(len(mapping))):
        raise ValueError(f"class map {path} must be a JSON object of identity -> labels 0..C-1, each once")
    return {str(name): int(label) for name, label in mapping.items()}


def load_image(
    path: Path, image_size: int = IMAGE_SIZE, resize: bool = False, decoder: str = "auto"
) -> np.ndarray:
    """Read and decode one file to uint8 RGB ``(image_size, image_size, 3)``; errors name the file."""
    return check_size(decode_image(path.read_bytes(), source=str(path), decoder=decoder), str(path),
                      image_size, resize)


# how a user skips bad files: the argument (marginface prepare rec spells it --skip-bad), and the command that packs
# a folder for the other routes here (training straight from a folder has no such option)
_SKIP_BAD = "`skip_bad=True` to leave it out (marginface prepare rec --skip-bad)"


def entry_kind(path: Path) -> str:
    """Why a non-image entry of an identity folder is not an image, in words (a dangling link or a FIFO is not a
    "nested folder")."""
    if path.is_symlink() and not path.exists():
        return "a dangling symbolic link"
    if path.is_dir():
        return "nested folder"
    if path.is_file():
        return "not an image file (extension)"
    return "not a regular file (a FIFO, socket or device)"


def check_size(image: np.ndarray, source: str, image_size: int, resize: bool) -> np.ndarray:
    """Return ``image`` if it is ``image_size`` square, resize it if allowed, else raise naming ``source``."""
    if image.shape[:2] == (image_size, image_size):
        return image
    if not resize:
        raise ValueError(
            f"{source} is {image.shape[1]}x{image.shape[0]}, expected {image_size}x{image_size} aligned faces: "
            "align raw photos first (marginface align SRC DST); faces that are only the wrong size can be resized "
            "with marginface prepare rec --resize (resize=True in Python)"
        )
    import cv2

    shrink = image.shape[0] > image_size
    # INTER_AREA averages when shrinking (no aliasing); linear when enlarging
    return cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def filter_identities(
    found: dict[str, list[Path]], exclude: Iterable[str] | None = None, keep: Iterable[str] | None = None,
    merge: Mapping[str, str] | None = None,
) -> dict[str, list[Path]]:
    """Apply cleaning lists to ``{identity: paths}``: exclude identities, keep listed images, merge labels.

    Exclusion runs before labels are numbered, so the remaining identities get labels ``0 .. C'-1``.
    """
    if exclude is None and keep is None and not merge:
        return found
    found = {k: list(v) for k, v in found.items() if k not in set(exclude or ())}
    if keep is not None:
        wanted = set(keep)
        found = {k: [p for p in v if f"{k}/{p.name}" in wanted] for k, v in found.items()}
        found = {k: v for k, v in found.items() if v}
    for source, target in (merge or {}).items():
        if source in found and target in found:
            found[target] = sorted(found[target] + found.pop(source))
    if not found:
        raise ValueError("the exclusion list / image list leaves no images: check that they name this dataset")
    return found


class FolderDataset(Dataset):
    """``root/<identity>/<image>`` as a torch Dataset of ``((3, 112, 112) float32 in [-1, 1], label)``.

    Args:
        root: folder holding one sub-folder per identity.
        transform: applied to the normalised ``(3, H, W)`` tensor (e.g. ``RandomHorizontalFlip()``).
        skip_bad: decode every image now and leave out bad files / empty identity folders (see
            ``.skipped``) instead of raising on the first one.
        class_map: an identity -> label mapping (or the path of its JSON) to reuse; identities found on
            disk must all be in it. Default: the sorted folder names.
        image_size: expected side in pixels.
        resize: resize other sizes instead of raising (for pre-cropped, not yet 112x112 faces).
        decoder: ``"auto"`` or a name from :mod:`marginface.data.decode`.
        exclude_identities: identity folder names to leave out (e.g. a ``marginface clean overlap`` list).
        image_list: ``identity/file`` names to keep (e.g. a cleaned list); the others are left out.
        merge_identities: ``{source identity: target identity}``; the source's images get the target's label.

    Attributes:
        samples: ``[(path, label), ...]`` sorted by identity then file name.
        classes: identity names, index = label. ``num_classes``: ``len(classes)``.
        skipped: paths left out under ``skip_bad`` (``skip_reasons`` maps each to why).
    """

    def __init__(
        self,
        root: str | Path,
        transform: Transform | None = None,
        skip_bad: bool = False,
        *,
        class_map: Mapping[str, int] | str | Path | None = None,
        image_size: int = IMAGE_SIZE,
        resize: bool = False,
        decoder: str = "auto",
        exclude_identities: Iterable[str] | None = None,
        image_list: Iterable[str] | None = None,
        merge_identities: Mapping[str, str] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder {self.root} does not exist or is not a folder")
        self.transform, self.image_size, self.resize, self.decoder = transform, image_size, resize, decoder
        self.skipped: list[Path] = []
        self.skip_reasons: dict[Path, str] = {}
        found = filter_identities(self._scan(skip_bad), exclude_identities, image_list, merge_identities)
        self.class_to_label = self._label_map(found, class_map)
        self.classes = sorted(self.class_to_label, key=self.class_to_label.__getitem__)
        self.samples = [(path, self.class_to_label[name]) for name in sorted(found) for path in found[name]]
        if skip_bad:
            self._drop_bad()
        if not self.samples:
            raise ValueError(f"no usable images under {self.root} ({len(self.skipped)} skipped)" +
                             (f"; first: {self.skipped[0]}: {self.skip_reasons[self.skipped[0]]}"
                              if self.skipped else "; expected root/<identity>/<image> files"))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = to_tensor(load_image(path, self.image_size, self.resize, self.decoder))
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def read_bytes(self, index: int) -> tuple[bytes, int]:
        """The encoded file of sample ``index`` and its label (what :func:`write_recordio` packs)."""
        path, label = self.samples[index]
        return path.read_bytes(), label

    def save_class_map(self, path: str | Path) -> Path:
        """Write this dataset's identity -> label map as JSON (reload with ``class_map=path``)."""
        return save_class_map(self.class_to_label, path)

    def _skip(self, path: Path, reason: str) -> None:
        self.skipped.append(path)
        self.skip_reasons[path] = reason

    def _scan(self, skip_bad: bool) -> dict[str, list[Path]]:
        """identity name -> its image paths (sorted); non-image files and empty folders raise or skip."""
        found: dict[str, list[Path]] = {}
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            images = []
            try:
                entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
            except OSError as err:  # an unreadable identity folder (permissions, I/O error)
                if not skip_bad:
                    raise ValueError(f"cannot read identity folder {folder} ({err.strerror}): fix it, or pass "
                                     f"{_SKIP_BAD}") from err
                self._skip(folder, f"unreadable folder ({err.strerror})")
                continue
            for path in entries:
                if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                    images.append(path)
                    continue
                reason = entry_kind(path)
                if not skip_bad:
                    raise ValueError(f"{path} is {reason}: identity folders may hold only images "
                                     f"({', '.join(sorted(IMAGE_EXTENSIONS))}); remove it, or pass {_SKIP_BAD}")
                self._skip(path, reason)
            if images:
                found[folder.name] = images
            elif not skip_bad:
                raise ValueError(f"identity folder {folder} holds no images: remove it, or pass {_SKIP_BAD}")
            else:
                self._skip(folder, "empty identity folder")
        return found

    def _label_map(self, found: Mapping[str, list[Path]], class_map) -> dict[str, int]:
        if class_map is None:
            return {name: label for label, name in enumerate(sorted(found))}
        mapping = load_class_map(class_map) if isinstance(class_map, (str, Path)) else dict(class_map)
        missing = sorted(set(found) - set(mapping))
        if missing:
            raise ValueError(f"identities {missing[:5]} under {self.root} are not in the given class map "
                             f"({len(missing)} missing): use the map of the dataset they belong to")
        return mapping

    def _drop_bad(self) -> None:
        from tqdm.auto import tqdm

        kept = []
        for path, label in tqdm(self.samples, desc=f"checking {self.root.name}", unit="img", leave=False):
            try:
                load_image(path, self.image_size, self.resize, self.decoder)
            except (OSError, ValueError) as error:
                self._skip(path, str(error))
                continue
            kept.append((path, label))
        self.samples = kept
