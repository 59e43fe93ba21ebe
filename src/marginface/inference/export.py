"""Export a model to ONNX (fp32, fp16 or INT8) with its card in ``metadata_props``.

The graph is the backbone alone: input ``input`` (B, 3, S, S) float32 **normalised per the card** (channel
order, ``(x - mean) / std``), output ``embedding`` (B, D) float32 raw (not normalised), batch dynamic.
:func:`~marginface.models.load_model` reads the card and applies the contract, so an export is used
exactly like the original.

- Exporter: ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript; the default since torch 2.9) —
  it exports every marginface CNN backbone on torch 2.13 and runs on onnxruntime with cosine >= 0.9999 to
  torch (docs/inference.md). The TorchScript exporter (``dynamo=False``) is the fallback, used only when the
  dynamo export raises; the report says which ran.
- fp16: the fp32 graph converted by onnxruntime's ``convert_float_to_float16`` with fp32 input/output
  (``keep_io_types``): weights and activations fp16 inside.
- INT8: onnxruntime static quantization (QDQ format, per-channel int8 weights, int8 activations) calibrated
  on aligned faces from ``calibration_images`` — real faces, because activation ranges seen on noise are not
  those seen on faces. Activation ranges: ``percentile`` (default: the 0.001 / 99.999 percentiles of each
  activation, so a few outliers do not stretch the int8 grid; it gave a higher cosine to fp32 than ``minmax``
  on random-init weights, a tie on trained ones: docs/inference.md), ``minmax`` or ``entropy``.

The card of an export is the source card with ``precision`` set; its ``weights_sha256`` stays the source
weights' hash, so an fp32 export shares galleries with the torch model while fp16/INT8 exports (different
numbers) do not (``ModelCard.compatibility_key``). The graph's own initializer hash is stored beside it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marginface.errors import UserError
from marginface.files import atomic_write

INT8_METHODS = ("percentile", "minmax", "entropy")


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote: path, precision, exporter used and the parity check on ``faces``."""

    path: str
    precision: str
    exporter: str
    parity_min_cosine: float = float("nan")
    parity_mean_cosine: float = float("nan")
    parity_faces: int = 0
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (f"wrote {self.path} ({self.precision}, exporter {self.exporter}); torch vs onnxruntime cosine on "
                f"{self.parity_faces} faces: min {self.parity_min_cosine:.6f}, mean {self.parity_mean_cosine:.6f}")


def export_onnx(model: str | os.PathLike, out: str | os.PathLike, *, fp16: bool = False, int8: bool = False,
                calibration_images: str | os.PathLike | None = None, calibration_count: int = 200,
                int8_method: str = "percentile", opset: int = 18) -> ExportReport:
    """Export the model at ``model`` (any :func:`load_model` torch format) to ``out`` (.onnx).

    Raises:
        UserError: both ``fp16`` and ``int8``; ``int8`` without calibration images; a model that is already
            ONNX; calibration images that are not aligned faces.
    """
    from marginface.models.load import load_model

    if fp16 and int8:
        raise UserError("choose one of `fp16` and `int8`")
    if int8_method not in INT8_METHODS:
        raise UserError(f"unknown INT8 calibration method {int8_method!r}; use one of {', '.join(INT8_METHODS)}")
    if int8 and calibration_images is None:
        raise UserError("`int8` needs `calibration_images=DIR`: aligned faces (e.g. the output of marginface align)")
    out = Path(out)
    if out.is_dir():  # checked before the minutes of export, which would end in "[Errno 21] Is a directory"
        raise IsADirectoryError(f"`out` {out} is a folder, expected an .onnx file path (e.g. {out / 'model.onnx'})")
    loaded = load_model(model)
    if loaded.kind != "torch":
        raise UserError(f"{model} is already an ONNX model; export from its .safetensors/.pth file")
    faces = _aligned_faces(calibration_images, loaded.card.input.size, calibration_count) \
        if calibration_images is not None else _noise_faces(loaded.card.input.size)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        exporter = _export_fp32(loaded.runner, loaded.card.input.size, fp32, opset)
        precision = "int8" if int8 else "fp16" if fp16 else "fp32"
        final = Path(tmp) / "final.onnx"
        if fp16:
            _to_fp16(fp32, final)
        elif int8:
            _quantize_int8(fp32, final, loaded.normalise_input(torch.from_numpy(faces)).numpy(), tmp, int8_method)
        else:
            final = fp32
        _write_with_card(final, out, loaded.card, precision, str(model))
    report = ExportReport(str(out), precision, exporter)
    _check_parity(loaded, out, faces[:64], report)
    return report


def _export_fp32(network: torch.nn.Module, size: int, path: Path, opset: int) -> str:
    """Export ``network`` to a single-file fp32 ONNX at ``path``; returns the exporter that worked."""
    import onnx

    example = torch.zeros(2, 3, size, size)
    network = network.to("cpu").eval()
    try:
        with warnings.catch_warnings(), _quiet_torchvision_registration():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                network, (example,), dynamo=True, input_names=["input"], output_names=["embedding"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},), opset_version=opset,
                verbose=False)
        onnx.save(program.model_proto, str(path))  # one file: weights inline (< 2 GB)
        return "dynamo"
    except Exception as err:  # noqa: BLE001 (any torch.export failure -> the TorchScript exporter)
        first = f"{type(err).__name__}: {str(err)[:200]}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(network, (example,), str(path), dynamo=False, input_names=["input"],
                          output_names=["embedding"], dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
                          opset_version=min(opset, 17))
    return f"torchscript (dynamo failed: {first})"


@contextlib.contextmanager
def _quiet_torchvision_registration() -> Iterator[None]:
    """The dynamo exporter logs one warning per torchvision op it cannot register ("torchvision is not installed.
    Skipping torchvision::nms", ...) when torchvision is absent; face backbones use none of those ops."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _to_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))


class _FacesReader:
    """onnxruntime CalibrationDataReader over (N, 3, S, S) normalised faces, in batches of 16."""

    def __init__(self, faces: np.ndarray, name: str) -> None:
        self.batches = iter([{name: faces[i : i + 16]} for i in range(0, len(faces), 16)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def _quantize_int8(src: Path, dst: Path, faces: np.ndarray, tmp: str, method: str = "percentile") -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibrate_method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                        "entropy": CalibrationMethod.Entropy}[method]
    prepared = Path(tmp) / "prepared.onnx"
    # BatchNormalization's scale is (C,): its channel axis is 0, not onnxruntime's default 1 (which logged
    # "Axis 1 is out-of-range for weight '...bn.weight' with rank 1" and fell back to one scale per tensor).
    # The calibrator's progress prints ("Collecting tensor data ...") go to a buffer: the report says what ran.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(dst), _FacesReader(faces.astype(np.float32), "input"),
                        quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QInt8, calibrate_method=calibrate_method,
                        extra_options={"QDQOpTypePerChannelSupportToAxis": {"BatchNormalization": 0}})


def _write_with_card(src: Path, out: Path, card: Any, precision: str, source: str) -> None:
    import copy

    import onnx

    from marginface.models.onnx_format import ONNX_HASH_KEY, onnx_weights_sha256, set_onnx_metadata

    exported = copy.deepcopy(card)
    exported.precision, exported.source = precision, f"marginface export of {source}"
    if precision != "fp32":
        exported.thresholds = {}  # a threshold calibrated at fp32 is not the fp16/int8 model's: recalibrate
    proto = onnx.load(str(src))
    set_onnx_metadata(proto, {**exported.metadata(), ONNX_HASH_KEY: onnx_weights_sha256(proto)})
    atomic_write(out, lambda tmp: onnx.save(proto, str(tmp)))  # a failed save leaves no partial file behind


def _check_parity(loaded: Any, path: Path, faces: np.ndarray, report: ExportReport) -> None:
    from marginface.models.load import load_model

    exported = load_model(path)
    a = loaded.embed_pixels(faces, flip=False).astype(np.float64)
    b = exported.embed_pixels(faces, flip=False).astype(np.float64)
    cosine = np.sum(a * b, axis=1)
    report.parity_min_cosine, report.parity_mean_cosine = float(cosine.min()), float(cosine.mean())
    report.parity_faces = len(faces)


# ------------------------------------------------------------------------------------------ faces
def aligned_face_files(folder: str | os.PathLike, count: int, seed: int = 0) -> list[Path]:
    """Up to ``count`` image files under ``folder`` (recursive), a seeded random choice, sorted."""
    from marginface.align.pipeline import IMAGE_EXTENSIONS

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"calibration image folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise UserError(f"no images under {root}: `calibration_images` needs aligned faces (marginface align)")
    if len(files) > count:
        files = [files[i] for i in np.sort(np.random.default_rng(seed).choice(len(files), count, replace=False))]
    return files


def _aligned_faces(folder: str | os.PathLike, size: int, count: int) -> np.ndarray:
    """(N, 3, S, S) float32 RGB 0..255 aligned faces from ``folder``; refuses images that are not S x S."""
    from marginface.data.images import to_rgb_array

    faces = []
    for path in aligned_face_files(folder, count):
        rgb = to_rgb_array(path)
        if rgb.shape[:2] != (size, size):
            raise UserError(f"{path} is {rgb.shape[1]}x{rgb.shape[0]}: calibration images must be aligned "
                            f"{size}x{size} faces (run marginface align on raw photos first)")
        faces.append(rgb.transpose(2, 0, 1))
    return np.stack(faces).astype(np.float32)


def _noise_faces(size: int, n: int = 8) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 3, size, size)).astype(np.float32)
