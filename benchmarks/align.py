"""Compare the face detectors on LFW: detection rate, several-face rate, landmark agreement, speed.

Usage: python benchmarks/align.py [--n 600] [--detectors mtcnn,mtcnn-torch,dlib]

Runs each detector single-threaded in this process over an evenly spaced sample of LFW deep-funneled
images (../shared/data). Speed is reported as wall and CPU milliseconds per image and as a ratio against
the first detector (the baseline) measured in the same run; CPU time is the steadier figure on a shared
machine. Landmark quality, without ground truth: (1) the RMS residual of the five points after the best
similarity fit to the ArcFace template, in 112-crop pixels (how face-shaped the five points are;
undefined for dlib, whose non-eye points are placed by the template); (2) the distance between each
detector's eye centres and the baseline's, as a fraction of the baseline's inter-ocular distance.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _limit_threads() -> None:
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def sample_lfw(n: int) -> list:
    from marginface.align.pipeline import list_images
    from marginface.paths import shared_data_dir

    root = shared_data_dir()
    if root is None:
        raise SystemExit("../shared/data is absent: this benchmark needs LFW")
    images, _ = list_images(root / "lfw" / "lfw-deepfunneled")
    return images[:: max(1, len(images) // n)][:n]


def run_detector(name: str, images: list[np.ndarray]) -> dict:
    from marginface.align.detectors import create_detector, select_face

    detector = create_detector(name)
    detector.detect(images[0])  # warm-up: lazy allocations
    chosen, counts = [], []
    wall, cpu = time.perf_counter(), time.process_time()
    for image in images:
        found = detector.detect(image)
        counts.append(len(found))
        chosen.append(found.landmarks[select_face(found, image.shape)[0]] if len(found) else None)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"counts": np.array(counts), "landmarks": chosen, "wall_ms": 1e3 * wall / len(images),
            "cpu_ms": 1e3 * cpu / len(images)}


def template_residual(landmarks: np.ndarray) -> float:
    from marginface.align.template import ARCFACE_TEMPLATE_112, similarity_transform

    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE_112)
    moved = landmarks @ matrix[:, :2].T + matrix[:, 2]
    return float(np.sqrt(((moved - ARCFACE_TEMPLATE_112) ** 2).sum(1).mean()))


def eye_agreement(ours: list, base: list) -> tuple[float, float]:
    """Median eye-centre distance to the baseline / its inter-ocular distance, and the share above 0.25."""
    errors = []
    for a, b in zip(ours, base):
        if a is not None and b is not None:
            errors.append(np.linalg.norm(a[:2] - b[:2], axis=1).mean() / np.linalg.norm(b[1] - b[0]))
    if not errors:
        return float("nan"), float("nan")
    return float(np.median(errors)), float(np.mean(np.array(errors) > 0.25))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--detectors", default="mtcnn,mtcnn-torch,dlib")
    args = parser.parse_args()
    _limit_threads()
    from marginface.align.pipeline import read_rgb

    paths = sample_lfw(args.n)
    images = [read_rgb(p) for p in paths]
    print(f"{len(images)} LFW images, 1 thread, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print(f"{'detector':12s} {'found':>7s} {'several':>8s} {'wall ms':>8s} {'cpu ms':>7s} {'cpu ratio':>9s} "
          f"{'fit rms px':>10s} {'eye vs base':>11s} {'>0.25 IOD':>9s}")
    results = {}
    for name in args.detectors.split(","):
        try:
            results[name] = run_detector(name, images)
        except ImportError as err:
            print(f"{name:12s} skipped: {err}")
    base = results[next(iter(results))]
    for name, r in results.items():
        found = [lm for lm in r["landmarks"] if lm is not None]
        fit = np.median([template_residual(lm) for lm in found]) if name != "dlib" else float("nan")
        median, far = eye_agreement(r["landmarks"], base["landmarks"])
        print(f"{name:12s} {100 * (r['counts'] > 0).mean():6.2f}% {100 * (r['counts'] > 1).mean():7.2f}% "
              f"{r['wall_ms']:8.1f} {r['cpu_ms']:7.1f} {r['cpu_ms'] / base['cpu_ms']:9.2f} {fit:10.2f} "
              f"{median:11.4f} {100 * far:8.2f}%")


if __name__ == "__main__":
    main()
