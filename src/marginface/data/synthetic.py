"""Synthetic identities: the embedded default data set (nothing to download), computed on the fly.

An identity is a stable face-like structure drawn from its own random stream ``(seed, identity)``: head
and jaw shape, skin tone and skin texture (a smooth per-identity pattern plus moles), hair colour and style,
eye spacing/size/iris colour, brows, nose, mouth and lips, facial hair. Each image ``(seed, identity, j)``
varies only nuisance: yaw-like feature shift, in-plane rotation, scale and shift, expression (smile, open
mouth, brow raise, blink), background, illumination gain/gradient/colour cast, blur, sensor noise and an
occluding patch. Rendering is ~30 anti-aliased OpenCV primitives on a 112x112 canvas, one affine warp and
a few vectorised numpy ops; it costs about 4-7 PIL decodes of a 112x112 JPEG (benchmarks/data.py, docs/data.md).

The nuisance is strong on purpose: raw-pixel similarity verifies held-out identities poorly (measured
in tests/data/test_synthetic.py and benchmarks/data.py), so a model has to learn the identity structure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from torch.utils.data import Dataset

from marginface.data.transforms import to_tensor

_SHIFT = 4  # cv2 fixed-point bits: coordinates are drawn with 1/16-pixel precision
_SCALE = 1 << _SHIFT
_HAIR = np.array([[20, 18, 16], [60, 40, 25], [110, 75, 40], [200, 165, 110], [150, 60, 30], [150, 150, 150]])
_IRIS = np.array([[70, 45, 25], [60, 110, 160], [80, 120, 70], [110, 110, 120]])


@dataclass(frozen=True)
class Identity:
    """The stable structure of one identity; lengths in pixels of the 112x112 canonical frame, colours RGB 0-255."""

    face_w: float
    jaw_w: float
    face_top: float
    face_bottom: float
    skin: np.ndarray
    texture: np.ndarray  # (6, 6) smooth skin pattern, upsampled when drawn
    moles: np.ndarray  # (K, 3): x, y, radius
    hair: np.ndarray
    hairline: float
    hair_volume: float
    hair_length: float
    eye_y: float
    eye_dx: float
    eye_w: float
    eye_h: float
    iris: np.ndarray
    brow_gap: float
    brow_thick: float
    brow_slope: float
    nose_y: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip: np.ndarray
    lip_thick: float
    beard: bool
    moustache: bool


def draw_identity(rng: np.random.Generator) -> Identity:
    """Draw one identity's structure from its own random stream."""
    tone = rng.uniform()
    skin = (1 - tone) * np.array([236, 201, 176]) + tone * np.array([92, 60, 44]) + rng.normal(0, 8, 3)
    hair = _HAIR[rng.integers(len(_HAIR))] + rng.normal(0, 12, 3)
    face_w = rng.uniform(30, 40)
    return Identity(
        face_w=face_w, jaw_w=face_w * rng.uniform(0.72, 1.0), face_top=rng.uniform(40, 50),
        face_bottom=rng.uniform(44, 54), skin=skin, texture=rng.normal(0, 1, (6, 6)),
        moles=np.column_stack([rng.uniform(30, 82, 4), rng.uniform(40, 95, 4), rng.uniform(0.8, 2.0, 4)])[
            : rng.integers(0, 5)],
        hair=hair, hairline=rng.uniform(14, 30), hair_volume=rng.uniform(1, 12),
        hair_length=rng.uniform(40, 112) if rng.uniform() < 0.85 else 0.0,
        eye_y=rng.uniform(46, 56), eye_dx=rng.uniform(14, 21), eye_w=rng.uniform(5, 8.5),
        eye_h=rng.uniform(2.2, 4.0), iris=_IRIS[rng.integers(len(_IRIS))] + rng.normal(0, 10, 3),
        brow_gap=rng.uniform(6, 11), brow_thick=rng.uniform(1.5, 4.0), brow_slope=rng.uniform(-0.3, 0.3),
        nose_y=rng.uniform(66, 78), nose_w=rng.uniform(5, 10), mouth_y=rng.uniform(84, 96),
        mouth_w=rng.uniform(8, 15), lip=skin * rng.uniform(0.55, 0.8) + np.array([40, 0, 0]),
        lip_thick=rng.uniform(1.5, 4.5), beard=bool(rng.uniform() < 0.2), moustache=bool(rng.uniform() < 0.2),
    )


@dataclass(frozen=True)
class Nuisance:
    """What changes from one image of an identity to the next."""

    yaw: float  # -1..1, inner features shift sideways by up to ~6 px
    smile: float  # -1..1, mouth corners up (+) or down
    mouth_open: float  # 0..1
    brow_raise: float  # pixels
    eye_open: float  # 0.15 (blink) .. 1.2
    angle: float  # degrees, in-plane rotation
    scale: float
    shift: np.ndarray  # (2,) pixels
    background: np.ndarray  # (3, 3): colour, x-gradient, y-gradient
    gain: float
    gradient: np.ndarray  # (2,) illumination slope per 112 px
    cast: np.ndarray  # (3,) per-channel gain
    blur: float  # Gaussian sigma in pixels, 0 = none
    noise: float  # std in 0-255 units
    occluder: np.ndarray | None  # x0, y0, x1, y1, r, g, b


def draw_nuisance(rng: np.random.Generator) -> Nuisance:
    """Draw one image's nuisance from its own random stream."""
    occluder = None
    if rng.uniform() < 0.35:
        w, h = rng.uniform(14, 44, 2)
        x0, y0 = rng.uniform(10, 102 - w), rng.uniform(25, 105 - h)
        occluder = np.array([x0, y0, x0 + w, y0 + h, *rng.uniform(0, 255, 3)])
    return Nuisance(
        yaw=rng.uniform(-1, 1), smile=rng.uniform(-1, 1), mouth_open=rng.uniform() ** 2,
        brow_raise=rng.uniform(-2, 3), eye_open=0.15 if rng.uniform() < 0.08 else rng.uniform(0.6, 1.2),
        angle=float(np.clip(rng.normal(0, 10), -25, 25)), scale=rng.uniform(0.86, 1.14),
        shift=rng.normal(0, 4, 2), background=np.vstack([rng.uniform(30, 225, 3), rng.normal(0, 45, (2, 3))]),
        gain=rng.uniform(0.55, 1.3), gradient=rng.normal(0, 0.35, 2), cast=rng.uniform(0.85, 1.15, 3),
        blur=rng.uniform(0.3, 1.8) if rng.uniform() < 0.5 else 0.0, noise=rng.uniform(0, 10),
        occluder=occluder,
    )


def _rgba(color) -> tuple[float, float, float, float]:
    """Opaque RGBA: every primitive also writes the alpha channel the composite uses."""
    return (*(float(c) for c in color[:3]), 255.0)


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _SCALE)), int(round(y * _SCALE))


def _ellipse(img: np.ndarray, cx, cy, ax, ay, color, angle=0.0, start=0, end=360, thickness=-1) -> None:
    import cv2

    axes = (max(int(round(ax * _SCALE)), 1), max(int(round(ay * _SCALE)), 1))
    cv2.ellipse(img, _pt(cx, cy), axes, angle, start, end, _rgba(color), thickness,
                cv2.LINE_AA, _SHIFT)


def _poly(img: np.ndarray, points, color, closed: bool = True, thickness: int = -1) -> None:
    import cv2

    pts = np.round(np.asarray(points, dtype=np.float64) * _SCALE).astype(np.int32).reshape(-1, 1, 2)
    color = _rgba(color)
    if thickness < 0:
        cv2.fillPoly(img, [pts], color, cv2.LINE_AA, _SHIFT)
    else:
        cv2.polylines(img, [pts], closed, color, thickness, cv2.LINE_AA, _SHIFT)


def _draw_head(img: np.ndarray, ident: Identity, cx: float, cy: float) -> None:
    """Hair mass, head (cranium + jaw half-ellipses), ears, skin texture and moles, on an RGBA canvas."""
    hair = ident.hair
    if ident.hair_length > 0:
        _ellipse(img, cx, cy - 4, ident.face_w + ident.hair_volume, ident.face_top + ident.hair_volume, hair,
                 start=180, end=360)
        side_bottom = min(cy + ident.hair_length - 40, 112)
        _poly(img, [(cx - ident.face_w - ident.hair_volume, cy - 4), (cx + ident.face_w + ident.hair_volume, cy - 4),
                    (cx + ident.face_w + ident.hair_volume * 0.6, side_bottom),
                    (cx - ident.face_w - ident.hair_volume * 0.6, side_bottom)], hair)
    skin = ident.skin
    for side in (-1, 1):
        _ellipse(img, cx + side * (ident.face_w - 1), ident.eye_y + 8, 4, 9, ident.skin * 0.9)
    _ellipse(img, cx, cy, ident.face_w, ident.face_top, skin, start=180, end=360)
    _ellipse(img, cx, cy, ident.jaw_w + (ident.face_w - ident.jaw_w) * 0.4, ident.face_bottom, skin, start=0, end=180)
    _poly(img, [(cx - ident.face_w, cy), (cx + ident.face_w, cy),
                (cx + ident.jaw_w, cy + ident.face_bottom * 0.45), (cx - ident.jaw_w, cy + ident.face_bottom * 0.45)],
          skin)
    if ident.hair_length > 0:  # fringe: hair above the hairline, inside the head
        _ellipse(img, cx, cy - 4, ident.face_w * 0.98, ident.face_top - ident.hairline * 0.35 + 4, hair,
                 start=180, end=360)
        _poly(img, [(cx - ident.face_w * 0.98, cy - 4), (cx + ident.face_w * 0.98, cy - 4),
                    (cx + ident.face_w * 0.9, ident.hairline), (cx - ident.face_w * 0.9, ident.hairline)], skin)


def _draw_features(img: np.ndarray, ident: Identity, nui: Nuisance, cx: float) -> None:
    """Eyes, brows, nose, mouth and facial hair; the nuisance moves them (yaw, expression)."""
    fx = cx + nui.yaw * 4.0  # inner features slide sideways as the head turns
    for side in (-1, 1):
        ex = fx + side * ident.eye_dx * (1 - 0.08 * side * nui.yaw)
        eh = ident.eye_h * nui.eye_open
        _ellipse(img, ex, ident.eye_y, ident.eye_w, eh, (245, 245, 240))
        if nui.eye_open > 0.3:
            _ellipse(img, ex + nui.yaw * 1.5, ident.eye_y, min(eh, 2.6), min(eh, 2.6), ident.iris)
            _ellipse(img, ex + nui.yaw * 1.5, ident.eye_y, 1.1, 1.1, (10, 10, 10))
        _ellipse(img, ex, ident.eye_y, ident.eye_w, eh, ident.skin * 0.55, thickness=1)
        by = ident.eye_y - ident.brow_gap - nui.brow_raise
        inner, outer = ex - side * ident.eye_w * 0.9, ex + side * ident.eye_w * 1.2
        _poly(img, [(inner, by + side * 0 + ident.brow_slope * 3), (outer, by - ident.brow_slope * 3)],
              ident.hair * 0.8, closed=False, thickness=max(int(round(ident.brow_thick)), 1))
    nx = fx + nui.yaw * 2.5  # the nose tip moves most
    _poly(img, [(fx, ident.eye_y + 4), (nx - ident.nose_w * 0.5, ident.nose_y),
                (nx + ident.nose_w * 0.5, ident.nose_y)], ident.skin * 0.82)
    for side in (-1, 1):
        _ellipse(img, nx + side * ident.nose_w * 0.35, ident.nose_y, 1.5, 1.0, ident.skin * 0.4)
    _draw_mouth(img, ident, nui, fx)


def _draw_mouth(img: np.ndarray, ident: Identity, nui: Nuisance, fx: float) -> None:
    my, mw, corner = ident.mouth_y, ident.mouth_w, -nui.smile * 3.0
    opening = nui.mouth_open * 7.0
    upper = [(fx - mw, my + corner), (fx - mw * 0.4, my - ident.lip_thick), (fx, my - ident.lip_thick * 0.7),
             (fx + mw * 0.4, my - ident.lip_thick), (fx + mw, my + corner)]
    lower = [(fx + mw, my + corner), (fx + mw * 0.5, my + ident.lip_thick + opening),
             (fx - mw * 0.5, my + ident.lip_thick + opening), (fx - mw, my + corner)]
    _poly(img, upper + lower, ident.lip)
    if opening > 1.0:
        _ellipse(img, fx, my + opening * 0.5 + 0.5, mw * 0.6, opening * 0.45, (40, 15, 15))
    if ident.moustache:
        _poly(img, [(fx - mw * 1.1, my - 2 + corner * 0.3), (fx, my - ident.lip_thick - 4),
                    (fx + mw * 1.1, my - 2 + corner * 0.3)], ident.hair * 0.9, closed=False, thickness=3)
    if ident.beard:
        _ellipse(img, fx, my + 9, mw * 1.3, 7, ident.hair * 0.9, start=0, end=180)


class SyntheticFaces(Dataset):
    """``num_identities x images_per_identity`` synthetic faces, rendered on the fly, deterministic.

    Sample ``i`` is image ``i % images_per_identity`` of identity ``identity_offset + i // images_per_identity``;
    its label is ``i // images_per_identity`` (0-based within this dataset). The same ``(seed, identity,
    image)`` always gives the same pixels, in any process.

    Args:
        num_identities, images_per_identity: the grid of samples.
        seed: selects the whole population; different seeds give unrelated identities.
        image_size: side in pixels (rendered at 112 and resized when different).
        transform: applied to the normalised ``(3, H, W)`` tensor.
        identity_offset: first identity index, so disjoint splits share one seed (see :func:`synthetic_splits`).
    """

    def __init__(
        self,
        num_identities: int,
        images_per_identity: int,
        seed: int,
        image_size: int = 112,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        identity_offset: int = 0,
    ) -> None:
        if num_identities < 1 or images_per_identity < 1:
            raise ValueError(f"need >= 1 identity and image each, got {num_identities} x {images_per_identity}")
        if seed < 0 or identity_offset < 0:
            raise ValueError(f"seed and identity_offset must be >= 0, got {seed}, {identity_offset}")
        self.num_identities, self.images_per_identity = num_identities, images_per_identity
        self.seed, self.image_size, self.transform = seed, image_size, transform
        self.identity_offset = identity_offset

    @property
    def num_classes(self) -> int:
        return self.num_identities

    def __len__(self) -> int:
        return self.num_identities * self.images_per_identity

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} synthetic images")
        label, image_index = divmod(index, self.images_per_identity)
        image = to_tensor(self.render(self.identity_offset + label, image_index))
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def render(self, identity: int, image_index: int) -> np.ndarray:
        """uint8 RGB ``(image_size, image_size, 3)`` of ``image_index`` of global ``identity``."""
        image = render_face(self.seed, identity, image_index)
        if self.image_size != 112:
            import cv2

            image = cv2.resize(image, (self.image_size, self.image_size), interpolation=cv2.INTER_AREA)
        return image


def render_face(seed: int, identity: int, image_index: int) -> np.ndarray:
    """Render image ``image_index`` of ``identity`` for population ``seed``: uint8 RGB ``(112, 112, 3)``."""
    ident = draw_identity(np.random.default_rng((seed, 0, identity)))
    nui_rng = np.random.default_rng((seed, 1, identity, image_index))
    nui = draw_nuisance(nui_rng)
    layer = np.zeros((112, 112, 4), dtype=np.float32)  # RGBA canvas in the canonical frame
    cx, cy = 56.0, 60.0
    _draw_head(layer, ident, cx, cy)
    _apply_texture(layer, ident)
    _draw_features(layer, ident, nui, cx)
    return _finish(layer, nui, nui_rng)


def _apply_texture(layer: np.ndarray, ident: Identity) -> None:
    """Identity-specific smooth skin pattern and moles (moved by the pose warp with the face)."""
    import cv2

    pattern = cv2.resize(ident.texture.astype(np.float32), (112, 112), interpolation=cv2.INTER_LINEAR)
    layer[:, :, :3] *= (1.0 + 0.12 * pattern)[:, :, None]
    for x, y, r in ident.moles:
        _ellipse(layer, x, y, r, r, ident.skin * 0.45)


_RAMP = np.linspace(-0.5, 0.5, 112, dtype=np.float32)


@cache
def _noise_bank() -> np.ndarray:
    """A fixed 256x256x3 unit-variance Gaussian field; images take a random crop of it.

    Drawing 112x112x3 fresh normals costs more than the whole rest of the render; sensor noise needs to
    vary between images, not to be independent across the whole data set.
    """
    return np.random.default_rng(0x5EED).standard_normal((256, 256, 3), dtype=np.float32)


def _finish(layer: np.ndarray, nui: Nuisance, rng: np.random.Generator) -> np.ndarray:
    """Pose warp, composite on the background, illumination, occluder, blur, noise -> uint8 RGB."""
    import cv2

    matrix = cv2.getRotationMatrix2D((56.0, 60.0), nui.angle, nui.scale)
    matrix[:, 2] += nui.shift
    warped = cv2.warpAffine(layer, matrix, (112, 112), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))
    colour, slope_x, slope_y = nui.background.astype(np.float32)
    background = colour + _RAMP[None, :, None] * slope_x + _RAMP[:, None, None] * slope_y
    alpha = warped[:, :, 3:] * np.float32(1 / 255)
    image = warped[:, :, :3] * alpha
    image += background * (1.0 - alpha)
    light = np.float32(nui.gain) * (1.0 + _RAMP[None, :] * np.float32(nui.gradient[0]) +
                                    _RAMP[:, None] * np.float32(nui.gradient[1]))
    image *= light[:, :, None] * nui.cast.astype(np.float32)
    if nui.occluder is not None:
        x0, y0, x1, y1 = (int(v) for v in nui.occluder[:4])
        image[y0:y1, x0:x1] = nui.occluder[4:]
    if nui.blur > 0:
        image = cv2.GaussianBlur(image, (0, 0), nui.blur)
    oy, ox = rng.integers(0, 256 - 112, 2)
    image += _noise_bank()[oy:oy + 112, ox:ox + 112] * np.float32(nui.noise)
    return np.clip(image, 0, 255, out=image).astype(np.uint8)


def synthetic_pairs(
    num_identities: int, images_per_identity: int, num_pairs: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Verification pairs over identities ``0..num_identities-1`` (offsets are added by the caller).

    Returns:
        members: ``(2N, 2)`` int64 of ``(identity, image index)``; pair ``i`` is rows ``2i`` and ``2i+1``.
        issame: ``(N,)`` bool, alternating True/False so every contiguous fold is balanced.
    """
    if num_identities < 2 or images_per_identity < 2:
        raise ValueError("verification pairs need >= 2 held-out identities and >= 2 images per identity, got "
                         f"{num_identities} x {images_per_identity}")
    rng = np.random.default_rng((seed, 2))
    members = np.empty((2 * num_pairs, 2), dtype=np.int64)
    issame = np.arange(num_pairs) % 2 == 0
    for i, same in enumerate(issame):
        if same:
            identity = rng.integers(num_identities)
            members[2 * i:2 * i + 2, 0] = identity
            members[2 * i:2 * i + 2, 1] = rng.choice(images_per_identity, 2, replace=False)
        else:
            members[2 * i:2 * i + 2, 0] = rng.choice(num_identities, 2, replace=False)
            members[2 * i:2 * i + 2, 1] = rng.integers(images_per_identity, size=2)
    return members, issame


def synthetic_verification_set(
    first_identity: int, num_identities: int, images_per_identity: int, num_pairs: int, seed: int,
    image_size: int = 112,
) -> tuple[torch.Tensor, np.ndarray]:
    """Verification pairs over identities ``first_identity..first_identity+num_identities-1`` of population ``seed``.

    Returns ``images`` ``(2N, 3, image_size, image_size)`` float32 in [-1, 1] (pair ``i`` = images ``2i``, ``2i+1``,
    the layout of :func:`marginface.data.bins.load_verification_bin`) and ``issame`` ``(N,)`` bool. Blocks of
    identities that do not overlap are different people, so one population gives disjoint training, validation
    and test identities.
    """
    people = SyntheticFaces(num_identities, images_per_identity, seed, image_size, identity_offset=first_identity)
    members, issame = synthetic_pairs(num_identities, images_per_identity, num_pairs, seed)
    images = np.empty((len(members), 3, image_size, image_size), dtype=np.float32)
    for row, (identity, image_index) in enumerate(members):
        # filled through numpy: a per-row torch copy goes through the intra-op pool, slow on busy CPUs
        images[row] = to_tensor(people.render(first_identity + int(identity), int(image_index))).numpy()
    return torch.from_numpy(images), issame


def synthetic_splits(
    num_train_ids: int, num_val_ids: int, images_per_identity: int, num_pairs: int, seed: int,
    image_size: int = 112, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[SyntheticFaces, torch.Tensor, np.ndarray]:
    """Open-set splits: a training set and verification pairs over *other* identities.

    Training identities are ``0..num_train_ids-1`` of population ``seed``; held-out identities are
    ``num_train_ids..num_train_ids+num_val_ids-1`` of the same population, so no identity is in both.

    Returns:
        train: :class:`SyntheticFaces` (labels ``0..num_train_ids-1``; ``transform`` applies to it only).
        images, issame: the held-out pairs, as :func:`synthetic_verification_set`.
    """
    train = SyntheticFaces(num_train_ids, images_per_identity, seed, image_size, transform)
    images, issame = synthetic_verification_set(num_train_ids, num_val_ids, images_per_identity, num_pairs, seed,
                                                image_size)
    return train, images, issame
