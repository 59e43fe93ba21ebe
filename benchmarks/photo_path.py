"""Photo in, embedding out: marginface ``FaceRecognizer.embed`` against face_recognition (dlib), same photos.

    python benchmarks/photo_path.py                        # 1,000 raw LFW photos, MS1M MobileFaceNet, 2 workers
    python benchmarks/photo_path.py --photos 100 --busy    # while burners keep every core busy
    python benchmarks/photo_path.py --workers 1 --json     # one process per pipeline: per-core figures
    python benchmarks/photo_path.py --lfw-accuracy         # LFW 10-fold accuracy, accurate vs fast path
    python benchmarks/photo_path.py --large 20             # 20 photos upscaled to 2000x2000 JPEGs (camera-sized)

The photos: the first ``--photos`` of ``benchmarks/photo_path_list.txt``, a fixed list of 1,000 raw 250x250
deep-funneled LFW photos (drawn once with ``numpy.random.default_rng(35)`` from the sorted 13,233; committed so
every run uses the same ones). The model: ``--model``, by default insightface's MS1M MobileFaceNet from
``../shared/models/insightface_mobilefacenet_y1`` (MXNet files, read by ``load_model`` into torch); the onnxruntime
rows use an fp32 ONNX export of it made at start-up (a ``.onnx`` ``--model`` has no torch rows).

Every pipeline runs in its own processes (clean peak RSS): ``--workers`` processes (default 2, one per core of a
2-core machine), each on its share of the photos, one thread each (``OMP_NUM_THREADS=1``; torch and onnxruntime
set to one intra-op thread once, before the first photo; dlib is single-threaded), started together after their
models are loaded and warmed up on two photos. Throughput = photos / wall time from that start to the last
worker's end.

Pipelines:

- ``face_recognition (HOG)``: ``face_recognition.load_image_file`` + ``face_encodings`` as a user calls them
  (HOG detector, upsample 1; 5-point landmarks; 128-d ResNet; ``num_jitters=1``, a single pass), the detection
  timed apart by calling the same dlib objects face_recognition calls, in the same order. Without
  ``face_recognition`` installed (it declares a dependency on the ``dlib`` source package: install it with
  ``pip install --no-deps face_recognition``), the identical calls are made on dlib directly.
- ``face_recognition (CNN)``: its CNN detector, on ``--cnn-photos`` photos only (seconds per photo on a CPU).
- ``ours {torch,onnx} b1`` / ``b8``: ``FaceRecognizer.embed`` on one photo per call, or 8 per call (faces batched
  through the embedder). Default detector settings (MTCNN, faces from 20 px, full-size photos).
- ``ours onnx b1 fast``: ``FaceRecognizer(min_face=40, max_side=640)``: faces from 40 px (the smallest that
  face_recognition's HOG finds at upsample 1) and a 640 px working size (JPEG DCT-scaled decode + detection on a
  shrunk copy; LFW's 250 px photos are not shrunk). ``... no-flip``: the same without flip TTA.
  Flip TTA elsewhere per the model card unless ``--flip``/``--no-flip``.

Reported per pipeline: photos/s, p50/p95 latency per photo (for a batched call: the call's wall time, which is what
each photo in it waits), CPU ms per photo (less sensitive to other processes than wall time), peak RSS of a worker,
photos with no face / one / several, and where the wall and CPU time go (decode / detect / embed / the rest). Then
ours / face_recognition ratios from the same run, and the 1-minute load average sampled during it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

LIST = Path(__file__).with_name("photo_path_list.txt")
MS1M_DIR = "insightface_mobilefacenet_y1"
FALLBACK_MODEL = "bubbliiiing_mobilefacenet/arcface_mobilefacenet_rgb255.onnx"
BATCH = 8  # faces per embedder call: 4-8 cost the least per face on one thread (32 spills the caches)
#: the fast path: faces searched from 40 px (the smallest face_recognition's HOG finds at upsample 1) and a
#: 640 px working size for photos larger than that (LFW's 250 px photos are not shrunk)
FAST = {"min_face": 40.0, "max_side": 640}


# ----------------------------------------------------------------------------------------------- workers
class StageClock:
    """Wall and CPU seconds spent inside wrapped callables, by stage name (CPU: this process, all threads)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def wrap(self, stage: str, fn):  # noqa: ANN001, ANN201 (any callable)
        def timed(*args, **kwargs):  # noqa: ANN202
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
                self.cpu[stage] = self.cpu.get(stage, 0.0) + time.process_time() - cpu
        return timed


def _ours(spec: dict):  # noqa: ANN202 (returns a per-chunk callable)
    """Build the FaceRecognizer of ``spec`` with one thread, its stages timed; returns (embed chunk, clock)."""
    import torch

    import marginface.inference.recognizer as recognizer_module
    from marginface.inference import FaceRecognizer
    from marginface.models.onnx_format import OnnxRunner

    library_threads = spec.get("library_threads", False)
    if not library_threads:
        torch.set_num_threads(1)
    # threads=1: one per process, as the rows promise (the recognizer's own default, inference/threads.py, would
    # follow the load average); threads=0 leaves torch's choice alone: the contention case
    rec = FaceRecognizer.load(spec["model"], batch_size=spec["batch"], threads=0 if library_threads else 1,
                              **spec.get("options", {}))
    if rec.model.kind == "onnx" and not library_threads:  # onnxruntime's default: a thread per core; set one
        rec.model.runner = OnnxRunner(spec["model"], threads=1)
    clock = StageClock()
    recognizer_module.to_rgb_array = clock.wrap("decode", recognizer_module.to_rgb_array)
    recognizer_module.read_photo = clock.wrap("decode", recognizer_module.read_photo)  # the max_side path
    detector = rec.detector()
    detector.detect = clock.wrap("detect", detector.detect)
    rec.model.embed_pixels = clock.wrap("embed", rec.model.embed_pixels)
    return lambda chunk: _embed_chunk(rec, chunk, spec.get("flip")), clock


def _embed_chunk(rec, chunk: list[str], flip: bool | None) -> list[int]:  # noqa: ANN001
    """Faces found per photo of ``chunk``; a chunk holding a faceless photo is redone photo by photo (as
    ``Gallery.enroll_folder`` does), the faceless ones counted as 0."""
    from marginface.errors import NoFaceError

    try:
        return [info.faces for info in rec.embed_with_info(chunk, flip=flip)[1]]
    except NoFaceError:
        if len(chunk) == 1:
            return [0]
        return [n for path in chunk for n in _embed_chunk(rec, [path], flip)]


def _dlib_calls():  # noqa: ANN202
    """(load_image_file, detector, pose_predictor_5_point, face_encoder) exactly as face_recognition uses them."""
    with warnings.catch_warnings():  # face_recognition_models imports pkg_resources (deprecated)
        warnings.simplefilter("ignore")
        try:
            import face_recognition.api as fr

            return fr.load_image_file, fr, "face_recognition " + _version("face_recognition")
        except ImportError:
            import dlib
            import face_recognition_models as frm
    from PIL import Image

    class Direct:  # face_recognition.api's module-level objects, built the same way
        face_detector = dlib.get_frontal_face_detector()
        cnn_face_detector = dlib.cnn_face_detection_model_v1(frm.cnn_face_detector_model_location())
        pose_predictor_5_point = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
        face_encoder = dlib.face_recognition_model_v1(frm.face_recognition_model_location())

    return (lambda path: np.array(Image.open(path).convert("RGB"))), Direct, "dlib direct (same calls)"


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _dlib(spec: dict):  # noqa: ANN202
    """face_recognition's face_encodings path (HOG or CNN detector), stages timed; returns (chunk fn, clock)."""
    load, fr, label = _dlib_calls()
    clock = StageClock()
    decode = clock.wrap("decode", load)
    if spec["detector"] == "cnn":
        detect = clock.wrap("detect", lambda image: [d.rect for d in fr.cnn_face_detector(image, 1)])
    else:
        detect = clock.wrap("detect", lambda image: fr.face_detector(image, 1))

    def encode(image: np.ndarray, rects: list) -> list:  # face_encodings(image, known locations), num_jitters=1
        shapes = [fr.pose_predictor_5_point(image, rect) for rect in rects]
        return [np.array(fr.face_encoder.compute_face_descriptor(image, shape, 1)) for shape in shapes]

    encode = clock.wrap("landmarks+embed", encode)

    def run(chunk: list[str]) -> list[int]:
        out = []
        for path in chunk:
            image = decode(path)
            out.append(len(encode(image, list(detect(image)))))
        return out

    clock.label = label
    return run, clock


def worker(spec: dict) -> None:
    """One process of one pipeline: build, warm up, say ready, wait for 'go', time the photos, print JSON."""
    paths = spec["paths"]
    run, clock = (_dlib if spec["kind"] == "dlib" else _ours)(spec)
    run(paths[:2])  # warm-up: first-call allocations and lazy initialisation are not timed
    clock.seconds.clear()
    clock.cpu.clear()
    print("ready", flush=True)
    sys.stdin.readline()
    batch = spec.get("batch", 1) if spec["kind"] == "ours" else 1
    latencies, faces = [], []
    cpu0, start = time.process_time(), time.perf_counter()
    for i in range(0, len(paths), batch):
        chunk = paths[i : i + batch]
        t0 = time.perf_counter()
        faces += run(chunk)
        latencies += [time.perf_counter() - t0] * len(chunk)
    result = {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu0, "latencies": latencies,
              "faces": faces, "stages": clock.seconds, "stages_cpu": clock.cpu, "peak_rss_mb": _peak_rss_mb(),
              "label": getattr(clock, "label", "")}
    print(json.dumps(result), flush=True)


def _peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not getrusage's ru_maxrss: ru_maxrss keeps the high-water
    mark of the parent image this process was forked from (the benchmark's, before exec)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # elsewhere: the best available


# ----------------------------------------------------------------------------------------------- LFW accuracy
#: where a faceless LFW photo is warped from: the ArcFace template on the central 114 px of the 250 px photo
#: (deep-funneled LFW centres the face; the same central box benchmarks/dlib_lfw.py falls back to)
_LFW_FALLBACK_SCALE, _LFW_FALLBACK_OFFSET = 114 / 112, 68.0


def embed_worker(spec: dict) -> None:
    """Embed ``spec['paths']`` with one thread; faceless photos use the central fallback. Writes an .npz."""
    if spec.get("kind") == "dlib":
        embeddings, found = dlib_embed(spec["paths"])
        np.savez(spec["out"], embeddings=embeddings, found=found)
        return
    import torch

    from marginface.align.template import ARCFACE_TEMPLATE_112, warp_face
    from marginface.data.images import to_rgb_array
    from marginface.errors import NoFaceError
    from marginface.inference import FaceRecognizer
    from marginface.models.onnx_format import OnnxRunner

    torch.set_num_threads(1)
    rec = FaceRecognizer.load(spec["model"], batch_size=BATCH, threads=1, **spec.get("options", {}))
    if rec.model.kind == "onnx":
        rec.model.runner = OnnxRunner(spec["model"], threads=1)
    fallback = ARCFACE_TEMPLATE_112 * _LFW_FALLBACK_SCALE + _LFW_FALLBACK_OFFSET
    vectors, found = [], []
    for path in spec["paths"]:
        try:
            vectors.append(rec.embed([path], flip=spec.get("flip"))[0])
            found.append(True)
        except NoFaceError:
            crop = warp_face(to_rgb_array(path), fallback, rec.size)
            vectors.append(rec.embed([crop], aligned=True, flip=spec.get("flip"))[0])
            found.append(False)
    np.savez(spec["out"], embeddings=np.stack(vectors), found=np.array(found))


def lfw_pairs_subset(pairs_path: Path, per_fold: int):  # noqa: ANN201 (PairsFile, indices)
    """The first ``per_fold / 2`` matched and mismatched pairs of each fold of ``pairs.txt`` (all: 600)."""
    from marginface.data.pairs import read_pairs

    pairs = read_pairs(pairs_path)
    keep = []
    for fold in np.unique(pairs.folds):
        for same in (True, False):
            rows = np.flatnonzero((pairs.folds == fold) & (pairs.issame == same))
            keep.extend(rows[: per_fold // 2].tolist())
    return pairs, np.array(sorted(keep))


def run_lfw_accuracy(args: argparse.Namespace, model: Path, lfw_root: Path) -> dict:
    """10-fold LFW accuracy of ``--lfw-paths`` (ours: accurate / fast path, cosine; face_recognition: dlib,
    Euclidean) on the same pairs and photos."""
    from marginface.evaluation.metrics import kfold_accuracy

    pairs, rows = lfw_pairs_subset(lfw_root / "pairs.txt", args.lfw_pairs_per_fold)
    names = list(dict.fromkeys(pairs.names[rows].ravel().tolist()))
    index = {name: i for i, name in enumerate(names)}
    paths = [str(lfw_root / "lfw-deepfunneled" / name) for name in names]
    ours = {"accurate", "fast"} & set(args.lfw_paths.split(","))
    onnx = model_files(model, Path(args.tmp))["onnx"] if ours else None
    out = {"pairs": len(rows), "photos": len(names)}
    for label in args.lfw_paths.split(","):
        start = time.perf_counter()
        spec = {"kind": "dlib"} if label == "face_recognition" else {"model": onnx, "flip": args.flip,
                                                                     "options": {"accurate": {}, "fast": FAST}[label]}
        embeddings, found = _embed_in_workers(spec, paths, args.workers, Path(args.tmp))
        a = embeddings[[index[n] for n in pairs.names[rows, 0]]].astype(np.float64)
        b = embeddings[[index[n] for n in pairs.names[rows, 1]]].astype(np.float64)
        # dlib's descriptor is trained for Euclidean distance (benchmarks/dlib_lfw.py); ours are unit vectors
        scores = -np.linalg.norm(a - b, axis=1) if label == "face_recognition" else np.sum(a * b, axis=1)
        result = kfold_accuracy(scores, pairs.issame[rows], pairs.folds[rows])
        out[label] = {"accuracy": result.mean, "std": result.std, "no_face_fallback": int((~found).sum()),
                      "seconds": time.perf_counter() - start, "scores": scores}
        print(f"LFW {label}: {100 * result.mean:.2f} +- {100 * result.std:.2f} % on {len(rows)} pairs, "
              f"{int((~found).sum())} of {len(names)} photos without a face (central fallback)", flush=True)
    if "accurate" in out and "fast" in out:
        out["score_abs_diff_max"] = float(np.abs(out["accurate"]["scores"] - out["fast"]["scores"]).max())
    for label in args.lfw_paths.split(","):
        out[label].pop("scores")
    return out


def dlib_embed(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """benchmarks/dlib_lfw.py's pipeline (HOG, upsample 1, the detection nearest the centre; its CNN detector,
    then a central box, when HOG finds none; 5-point landmarks; 128-d, no jitter): (N, 128), found by a detector."""
    from PIL import Image

    from dlib_lfw import _detect, _load_dlib

    models = _load_dlib()
    vectors, found = [], []
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        rect, how = _detect(models, image, 1)
        vectors.append(np.asarray(models[4].compute_face_descriptor(image, models[3](image, rect), 0), np.float32))
        found.append(how != "fallback")
    return np.stack(vectors), np.array(found)


def _embed_in_workers(spec: dict, paths: list[str], workers: int, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    procs, outs = [], []
    for w in range(workers):
        outs.append(tmp / f"lfw_{w}.npz")
        spec_path = _spec_file({**spec, "paths": paths[w::workers], "out": str(outs[-1])}, tmp / f"lfw_{w}.json")
        procs.append(subprocess.Popen([sys.executable, __file__, "--embed-worker", spec_path], env=env))
    for proc in procs:
        if proc.wait():
            raise RuntimeError(f"an LFW embedding worker exited with {proc.returncode} (its error is above)")
    parts = [np.load(out) for out in outs]
    embeddings = np.empty((len(paths), parts[0]["embeddings"].shape[1]), np.float32)
    found = np.empty(len(paths), bool)
    for w, part in enumerate(parts):
        embeddings[w::workers], found[w::workers] = part["embeddings"], part["found"]
    return embeddings, found


# ----------------------------------------------------------------------------------------------- parent
def _spec_file(spec: dict, path: Path) -> str:
    """Write a worker's spec as JSON (a file, not an argument: thousands of paths exceed the kernel's 128 KiB
    limit on one argument)."""
    path.write_text(json.dumps(spec))
    return str(path)


def run_pipeline(spec: dict, paths: list[str], workers: int, tmp: Path) -> dict:
    """Run ``spec`` as ``workers`` processes over shares of ``paths``; merged result with photos/s."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    if spec.get("library_threads"):  # as a user's process starts: whatever the libraries choose
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        workers = 1
    procs = []
    for w in range(workers):
        share = _spec_file({**spec, "paths": paths[w::workers]}, tmp / f"{spec['name']}_{w}.json".replace(" ", "_"))
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", share], env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for proc in procs:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{spec['name']}: a worker failed before starting (its error is above)")
    start = time.perf_counter()
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    parts = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"{spec['name']}: a worker exited with {proc.returncode} (its error is above)")
        parts.append(json.loads(out.strip().splitlines()[-1]))
    return summarise(spec["name"], parts, time.perf_counter() - start)


def summarise(name: str, parts: list[dict], wall: float) -> dict:
    """Merge worker results: photos/s over the common wall time, latency percentiles, stage ms per photo."""
    latencies = np.concatenate([p["latencies"] for p in parts]) * 1000
    faces = np.concatenate([p["faces"] for p in parts]).astype(int)
    n = len(faces)
    return {"name": name, "photos": n, "photos_per_s": n / wall, "p50_ms": float(np.percentile(latencies, 50)),
            "p95_ms": float(np.percentile(latencies, 95)),
            "cpu_ms_per_photo": sum(p["cpu_s"] for p in parts) * 1000 / n,
            "peak_rss_mb": max(p["peak_rss_mb"] for p in parts), "no_face": int((faces == 0).sum()),
            "one_face": int((faces == 1).sum()), "several": int((faces > 1).sum()),
            "stages_ms": _per_photo_ms(parts, "stages", "wall_s", n),
            "stages_cpu_ms": _per_photo_ms(parts, "stages_cpu", "cpu_s", n), "label": parts[0]["label"]}


def _per_photo_ms(parts: list[dict], key: str, total_key: str, n: int) -> dict[str, float]:
    """ms per photo in each timed stage, summed over workers; the remainder (face choice, warp, Python) last."""
    stages: dict[str, float] = {}
    for part in parts:
        for stage, seconds in part[key].items():
            stages[stage] = stages.get(stage, 0.0) + 1000 * seconds / n
    stages["other"] = sum(p[total_key] for p in parts) * 1000 / n - sum(stages.values())
    return stages


class LoadSampler:
    """The 1-minute load average every ``period`` seconds while the benchmark runs (a daemon thread)."""

    def __init__(self, period: float = 2.0) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)

    def _run(self, period: float) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(period)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


#: how long a --busy burner spins at most: it is killed when the measurement ends; this bound only matters if the
#: benchmark itself is killed first (the burners then stop by themselves)
BURN_SECONDS = 3600
_BURN = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def start_burners(count: int, seconds: float) -> list[subprocess.Popen]:
    """``count`` processes spinning on a CPU each; every one stops by itself after ``seconds``."""
    return [subprocess.Popen([sys.executable, "-c", _BURN.format(seconds=seconds)]) for _ in range(count)]


def resolve_model(arg: str | None) -> Path:
    """``--model``, or by default the MS1M MobileFaceNet from ../shared/models when ``load_model`` reads it
    (MXNet format), else the CASIA MobileFaceNet ONNX file there (the same architecture, hence the same speed)."""
    if arg:
        return Path(arg)
    from marginface.inference import load_model
    from marginface.paths import shared_data_dir

    shared = shared_data_dir()
    if shared is None:
        raise SystemExit("no --model given and no ../shared/models: pass --model PATH")
    ms1m = shared.parent / "models" / MS1M_DIR
    for candidate in (ms1m, ms1m / "model-0000.params", ms1m / "model-symbol.json"):
        try:
            load_model(candidate)
            return candidate
        except Exception:  # noqa: BLE001 (any failure: this checkout cannot read MXNet files yet)
            continue
    fallback = shared.parent / "models" / FALLBACK_MODEL
    print(f"note: this checkout cannot load {ms1m} (MXNet); measuring {fallback} instead", file=sys.stderr)
    return fallback


def model_files(model: Path, tmp: Path) -> dict[str, str]:
    """{"torch": path, "onnx": path}: a torch model gets an ONNX export (fp32) for the onnx rows."""
    from marginface.inference import load_model
    from marginface.inference.export import export_onnx

    if load_model(model).kind == "onnx":
        return {"onnx": str(model)}
    onnx = tmp / "model.onnx"
    print(f"exporting {model} to ONNX for the onnxruntime rows...", file=sys.stderr)
    export_onnx(model, onnx)
    return {"torch": str(model), "onnx": str(onnx)}


def pipeline_specs(args: argparse.Namespace, files: dict[str, str]) -> list[dict]:
    specs = [{"name": "face_recognition (HOG)", "kind": "dlib", "detector": "hog"}]
    for runtime, path in files.items():
        for batch in (1, BATCH):
            specs.append({"name": f"ours {runtime} b{batch}", "kind": "ours", "model": path, "batch": batch,
                          "flip": args.flip})
    if args.library_threads and "torch" in files:
        specs.append({"name": "ours torch b1, 1 process, library threads", "kind": "ours", "model": files["torch"],
                      "batch": 1, "flip": args.flip, "library_threads": True})
    fast = files.get("onnx")  # batch 1: on one thread batching saves no CPU (see BATCH) and adds latency
    specs.append({"name": "ours onnx b1 fast", "kind": "ours", "model": fast, "batch": 1, "flip": args.flip,
                  "options": FAST})
    if args.flip is not False:
        specs.append({"name": "ours onnx b1 fast no-flip", "kind": "ours", "model": fast, "batch": 1,
                      "flip": False, "options": FAST})
    return specs


#: the long side of the camera-sized copies made by ``--large`` (a 4-megapixel photo)
LARGE_SIDE = 2000


def large_photos(paths: list[str], tmp: Path) -> list[str]:
    """Camera-sized stand-ins: each photo upscaled (bicubic) to LARGE_SIDE px, saved as JPEG quality 90.

    Upscaled LFW photos carry no more detail than the originals; they cost what a camera photo costs to decode
    and search (pixels), which is what the working-size path is about.
    """
    from PIL import Image

    out = []
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            big = image.convert("RGB").resize((LARGE_SIDE, LARGE_SIDE), Image.BICUBIC)
        out.append(str(tmp / f"large_{i:04d}.jpg"))
        big.save(out[-1], quality=90)
    return out


def large_specs(specs: list[dict]) -> list[dict]:
    """For ``--large``: face_recognition (HOG), ours at batch 1 accurate and fast (the rest adds nothing there)."""
    keep = {"face_recognition (HOG)", "ours onnx b1", "ours onnx b1 fast", "ours onnx b1 fast no-flip"}
    return [spec for spec in specs if spec["name"] in keep]


def photo_paths(lfw: Path, count: int) -> list[str]:
    names = LIST.read_text().split()
    if not 1 <= count <= len(names):
        raise SystemExit(f"--photos must be 1..{len(names)} (the committed list's length), got {count}")
    paths = [lfw / name for name in names[:count]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"{len(missing)} listed photos are missing under {lfw} (first: {missing[0]}): pass --lfw")
    return [str(p) for p in paths]


def print_table(rows: list[dict], load: list[float], args: argparse.Namespace) -> None:
    base = rows[0]
    what = f"{LARGE_SIDE}x{LARGE_SIDE} JPEG copies of LFW" if args.large else "raw 250x250 LFW"
    print(f"\n{rows[0]['photos']} {what} photos, {args.workers} worker process(es) per pipeline, 1 thread each; "
          f"{'busy: ' + str(os.cpu_count()) + ' CPU burners running' if args.busy else 'no burners'}; "
          f"1-min load average during the run: mean {np.mean(load):.2f}, max {np.max(load):.2f} "
          f"({os.cpu_count()} CPUs)")
    print("| pipeline | photos/s | vs face_recognition | p50 ms | p95 ms | CPU ms/photo | peak RSS MB | "
          "no face / one / several |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['photos_per_s']:.2f} | {r['photos_per_s'] / base['photos_per_s']:.2f}x | "
              f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['cpu_ms_per_photo']:.1f} | {r['peak_rss_mb']:.0f} | "
              f"{r['no_face']} / {r['one_face']} / {r['several']} |")
    for key, what in (("stages_ms", "wall"), ("stages_cpu_ms", "CPU")):
        print(f"\nwhere the {what} time goes, ms per photo (other: face choice, warp, Python):")
        for r in rows:
            print(f"  {r['name']:26s} " + "  ".join(f"{k} {v:.1f}" for k, v in r[key].items()))
    print(f"\n{base['name']} ran as: {base['label']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--embed-worker", help=argparse.SUPPRESS)
    parser.add_argument("--lfw-accuracy", action="store_true", help="instead of timing: LFW 10-fold accuracy "
                        "of the accurate and the fast path (cosine, flip per the card or --flip)")
    parser.add_argument("--lfw-paths", default="accurate,fast,face_recognition", help="with --lfw-accuracy: "
                        "which pipelines (face_recognition: benchmarks/dlib_lfw.py's dlib pipeline, Euclidean)")
    parser.add_argument("--lfw-pairs-per-fold", type=int, default=600, help="with --lfw-accuracy: the first "
                        "N/2 matched and N/2 mismatched pairs of each fold (600: all 6,000 pairs)")
    parser.add_argument("--model", help="face model (default: the MS1M MobileFaceNet in ../shared/models)")
    parser.add_argument("--lfw", type=Path, help="folder holding the LFW photos (default: ../shared/data/lfw/"
                        "lfw-deepfunneled)")
    parser.add_argument("--photos", type=int, default=1000, help="first N photos of the committed list")
    parser.add_argument("--workers", type=int, default=2, help="processes per pipeline, one thread each")
    parser.add_argument("--cnn-photos", type=int, default=0, help="also time face_recognition's CNN detector on "
                        "this many photos (0: skip; it takes seconds per photo on a CPU)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="flip TTA for ours (default: the model card's)")
    parser.add_argument("--library-threads", action="store_true", help="add a row: ours (torch, batch 1) in one "
                        "process with the thread counts torch picks by itself (FaceRecognizer threads=0)")
    parser.add_argument("--large", type=int, default=0, help=f"instead: the first N photos upscaled to "
                        f"{LARGE_SIDE}x{LARGE_SIDE} JPEGs (camera-sized decode and search cost)")
    parser.add_argument("--busy", action="store_true", help="keep every CPU busy with a spinning process meanwhile")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(Path(args.worker).read_text()))
        return
    if args.embed_worker:
        embed_worker(json.loads(Path(args.embed_worker).read_text()))
        return
    if args.lfw_accuracy:
        from marginface.paths import shared_data_dir

        lfw_root = args.lfw.parent if args.lfw else (shared_data_dir() or Path("/nonexistent")) / "lfw"
        with tempfile.TemporaryDirectory(prefix="photo_path_") as tmp:
            args.tmp = tmp
            report = run_lfw_accuracy(args, resolve_model(args.model), lfw_root)
        print(json.dumps(report, indent=1))
        return
    run_benchmark(args)


def run_benchmark(args: argparse.Namespace) -> None:
    from marginface.paths import shared_data_dir

    lfw = args.lfw or ((shared_data_dir() or Path("/nonexistent")) / "lfw" / "lfw-deepfunneled")
    paths = photo_paths(lfw, args.photos)
    model = resolve_model(args.model)
    rows, burners = [], []
    with tempfile.TemporaryDirectory(prefix="photo_path_") as tmp:
        specs = pipeline_specs(args, model_files(model, Path(tmp)))
        if args.large:
            paths, specs = large_photos(paths[: args.large], Path(tmp)), large_specs(specs)
        if args.cnn_photos:
            specs.insert(1, {"name": "face_recognition (CNN)", "kind": "dlib", "detector": "cnn"})
        try:
            if args.busy:
                burners = start_burners(os.cpu_count() or 2, seconds=BURN_SECONDS)
            with LoadSampler() as load:
                for spec in specs:
                    share = paths[: args.cnn_photos] if spec.get("detector") == "cnn" else paths
                    rows.append(run_pipeline(spec, share, args.workers, Path(tmp)))
                    print(f"{spec['name']}: {rows[-1]['photos_per_s']:.2f} photos/s", file=sys.stderr)
        finally:
            for proc in burners:
                proc.kill()
                proc.wait()
    report = {"model": str(model), "photos": len(paths), "workers": args.workers, "busy": args.busy,
              "large": LARGE_SIDE if args.large else None,
              "cpus": os.cpu_count(), "load_mean": float(np.mean(load.samples)),
              "load_max": float(np.max(load.samples)), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "rows": rows}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"model: {model}")
        print_table(rows, load.samples, args)


if __name__ == "__main__":
    main()
