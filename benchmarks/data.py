"""Input pipeline speed: decoders and loaders as ratios against plain PIL-from-folder, measured in one run.

    python benchmarks/data.py                                  # 2,000 JPEGs from the CelebA subset if present
    python benchmarks/data.py --source synthetic --images 1000
    python benchmarks/data.py --extra-python /path/to/venv-with-pillow-simd/bin/python
    python benchmarks/data.py --synthetic-check --cnn-seconds 60   # + how hard the synthetic identities are

Test images: 112x112 JPEGs (quality 95) written to a temporary folder, one sub-folder per identity, then
packed into a .rec. From ``../shared/data/celeba299`` (the centre of each loose crop, resized to 112x112) when
present, else synthetic faces. Files are read once before timing, so both loaders read from the page cache:
the figures compare CPU cost (syscalls, parsing, decoding, normalisation, collation), not disk speed.

- decode: best-of-repeats microseconds per image for every installed decoder on the same in-memory bytes;
  ratio = PIL time / decoder time (> 1 is faster than PIL). ``--extra-python`` times PIL decoding under
  another interpreter (e.g. a venv with pillow-simd) on the same files.
- loaders: images per second through a DataLoader in this process with torch limited to one thread, which is
  what one DataLoader worker does; ratio against FolderDataset + PIL. ``--workers N`` adds the aggregate
  throughput of N worker processes.
- training loader (``--training``): what ``marginface train`` feeds the model — ``RecordIODataset`` of the
  ``.rec`` behind the trainer's ``FlipByIndex`` + ``StepBatchSampler`` (random order, flip p=0.5, [-1, 1]) — against
  what users write instead: torchvision ``ImageFolder`` + PIL + ``RandomHorizontalFlip`` + ``ToTensor`` +
  ``Normalize(0.5, 0.5)`` with ``shuffle=True`` (re-implemented in plain torch/PIL step for step when torchvision is
  not installed, and said so). Batch 128, in-process (one core: the per-core figure) and with 1 and 2 worker
  processes; best of ``--rounds``, the cases taking turns. The 16-core figure is *computed* (per-core x 16), not
  measured: this machine has 2 cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from marginface.data.decode import PREFERENCE, available_decoders, get_decoder
from marginface.data.folder import FolderDataset
from marginface.data.recordio import RecordIODataset, write_recordio
from marginface.data.synthetic import SyntheticFaces, render_face
from marginface.paths import shared_data_dir


def build_folder(root: Path, source: str, count: int, per_identity: int = 20) -> str:
    """Write ``count`` 112x112 JPEGs under root/<identity>/; returns a description of the source."""
    import cv2

    celeba = (shared_data_dir() or Path("/nonexistent")) / "celeba299"
    paths = sorted(celeba.glob("*/*.jpg"))[:count] if source == "celeba" and celeba.is_dir() else []
    for i in range(count):
        if paths:
            photo = cv2.imread(str(paths[i % len(paths)]))
            h, w = photo.shape[:2]  # loose 2.2x crops: the centre ~45% is the face
            crop = photo[int(h * 0.27):int(h * 0.73), int(w * 0.27):int(w * 0.73)]
            bgr = cv2.resize(crop, (112, 112), interpolation=cv2.INTER_AREA)
        else:
            bgr = cv2.cvtColor(render_face(0, i // per_identity, i % per_identity), cv2.COLOR_RGB2BGR)
        folder = root / f"{i // per_identity:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i:06d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return f"{count} CelebA crops" if paths else f"{count} synthetic faces"


def time_decoders(blobs: list[bytes], repeats: int) -> dict[str, float]:
    """Best microseconds per image of each installed decoder over ``blobs``.

    Decoders take turns within each repeat and the best pass counts, so load from other processes that
    comes and goes during the run penalises every decoder alike.
    """
    decoders = {name: get_decoder(name) for name in available_decoders()}
    best = dict.fromkeys(decoders, float("inf"))
    for _ in range(repeats):
        for name, decode in decoders.items():
            start = time.perf_counter()
            for blob in blobs:
                decode(blob)
            best[name] = min(best[name], (time.perf_counter() - start) / len(blobs) * 1e6)
    return best


_EXTRA_SCRIPT = """
import io, statistics, sys, time
from pathlib import Path
import numpy as np
from PIL import Image, features
blobs = [p.read_bytes() for p in sorted(Path(sys.argv[1]).glob('*/*.jpg'))]
runs = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    for b in blobs:
        with Image.open(io.BytesIO(b)) as im:
            np.asarray(im.convert('RGB'))
    runs.append((time.perf_counter() - t) / len(blobs) * 1e6)
import PIL
print(statistics.median(runs), PIL.__version__, features.version('jpg'))
"""


def time_extra_python(python: str, root: Path, repeats: int) -> tuple[float, str]:
    """PIL decode time under another interpreter (pillow-simd venv...): (us per image, version string)."""
    out = subprocess.run([python, "-c", _EXTRA_SCRIPT, str(root), str(repeats)], capture_output=True,
                         text=True, check=True).stdout.split()
    return float(out[0]), f"Pillow {out[1]} (libjpeg {out[2]}) under {python}"


def loader_rate(dataset: Dataset, workers: int, batch_size: int = 64) -> float:
    """Images per second of one full pass through a DataLoader (after one warm-up batch)."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    iterator = iter(loader)
    seen = len(next(iterator)[0])
    start = time.perf_counter()
    for images, _ in iterator:
        seen += len(images)
    return (seen - batch_size) / (time.perf_counter() - start)


def loader_table(root: Path, prefix: Path, count: int, workers: int, rounds: int) -> list[tuple[str, float, float]]:
    """(name, per-worker img/s, aggregate img/s with ``workers`` processes or nan); best of ``rounds``,
    the cases taking turns within each round."""
    fastest = available_decoders()[0]
    cases = {
        "folder + pil (baseline)": FolderDataset(root, decoder="pil"),
        f"folder + auto ({fastest})": FolderDataset(root),
        "recordio + pil": RecordIODataset(prefix, decoder="pil"),
        f"recordio + auto ({fastest})": RecordIODataset(prefix),
        "synthetic (rendered on the fly)": SyntheticFaces(max(count // 20, 1), 20, seed=0),
    }
    single, multi = dict.fromkeys(cases, 0.0), dict.fromkeys(cases, float("nan"))
    threads = torch.get_num_threads()
    for _ in range(rounds):
        for name, dataset in cases.items():
            torch.set_num_threads(1)  # what a DataLoader worker runs with
            single[name] = max(single[name], loader_rate(dataset, 0))
            torch.set_num_threads(threads)
            if workers > 0:
                multi[name] = np.fmax(multi[name], loader_rate(dataset, workers))
    return [(name, single[name], multi[name]) for name in cases]


class PILImageFolder(Dataset):
    """torchvision's ``ImageFolder(root, Compose([RandomHorizontalFlip(), ToTensor(), Normalize(.5, .5)]))`` done
    the way torchvision does it, for machines without torchvision: PIL open + ``convert("RGB")``, a coin flip
    and ``transpose(FLIP_LEFT_RIGHT)``, HWC uint8 -> CHW float / 255, then ``(x - 0.5) / 0.5`` in place."""

    def __init__(self, root: Path) -> None:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.samples = [(path, label) for label, name in enumerate(classes) for path in sorted((root / name).iterdir())]
        self.mean = torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1)
        self.std = torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[index]
        with open(path, "rb") as file:  # torchvision's pil_loader
            image = Image.open(file).convert("RGB")
        if torch.rand(1) < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        tensor = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).contiguous()
        tensor = tensor.to(torch.float32).div(255)
        return tensor.sub_(self.mean).div_(self.std), label


def image_folder_baseline(root: Path) -> tuple[Dataset, str]:
    """torchvision's ImageFolder pipeline when torchvision imports, else its plain-torch re-implementation."""
    try:
        from torchvision import datasets, transforms
    except Exception:  # noqa: BLE001 (absent, or a torchvision built for another torch)
        return PILImageFolder(root), "ImageFolder + PIL (plain torch re-implementation: torchvision not installed)"
    transform = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                    transforms.Normalize([0.5] * 3, [0.5] * 3)])
    return datasets.ImageFolder(str(root), transform), "torchvision ImageFolder + PIL"


def training_rate(case: str, root: Path, prefix: Path, workers: int, batch: int = 128) -> float:
    """Images per second of one pass (after a warm-up batch) through the ``case`` loader."""
    from marginface.training.data import FlipByIndex, StepBatchSampler

    if case == "ours":
        dataset = RecordIODataset(prefix)
        sampler = StepBatchSampler(len(dataset), batch, seed=0, start_step=0, total_steps=len(dataset) // batch)
        loader = DataLoader(FlipByIndex(dataset), batch_sampler=sampler, num_workers=workers)
    else:
        loader = DataLoader(image_folder_baseline(root)[0], batch_size=batch, shuffle=True, drop_last=True,
                            num_workers=workers)
    iterator = iter(loader)
    next(iterator)  # warm-up: worker start-up and first reads are not timed
    seen, start = 0, time.perf_counter()
    for images, _ in iterator:
        seen += len(images)
    return seen / (time.perf_counter() - start)


def training_table(root: Path, prefix: Path, rounds: int) -> dict[str, dict[int, float]]:
    """{case: {workers: best img/s}} for workers 0 (in-process, one thread), 1 and 2."""
    best = {case: {w: 0.0 for w in (0, 1, 2)} for case in ("ours", "baseline")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a DataLoader worker runs with one thread; in-process must match
    try:
        for _ in range(rounds):
            for workers in (0, 1, 2):
                for case in best:
                    best[case][workers] = max(best[case][workers], training_rate(case, root, prefix, workers))
    finally:
        torch.set_num_threads(threads)
    return best


def print_training(best: dict[str, dict[int, float]], baseline_name: str) -> None:
    import os

    print(f"\ntraining loader, batch 128, flip p=0.5, [-1, 1] (img/s; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs)")
    names = {"ours": "ours: RecordIO + FlipByIndex + StepBatchSampler", "baseline": baseline_name}
    for case, rates in best.items():
        print(f"  {names[case]:76s} in-process (1 core) {rates[0]:6.0f}   1 worker {rates[1]:6.0f}   "
              f"2 workers {rates[2]:6.0f}   16 cores (computed: 16 x per-core) {16 * rates[0]:7.0f}")
    for workers, label in ((0, "per core (in-process)"), (1, "1 worker"), (2, "2 workers")):
        print(f"  ours / baseline, {label}: {best['ours'][workers] / best['baseline'][workers]:.2f}x")


def print_decode(results: dict[str, float], extra: tuple[float, str] | None) -> None:
    baseline = results["pil"]
    print(f"\ndecode, 112x112 JPEG q95 (us/img; ratio = PIL time / time, > 1 is faster); preference {PREFERENCE}")
    for name, micros in sorted(results.items(), key=lambda item: item[1]):
        print(f"  {name:12s} {micros:8.1f} us   x{baseline / micros:5.2f}")
    if extra:
        print(f"  {'extra':12s} {extra[0]:8.1f} us   x{baseline / extra[0]:5.2f}   {extra[1]}")
    missing = [name for name in PREFERENCE if name not in results]
    for name in missing:
        print(f"  {name:12s} not importable here: {_import_error(name)}")


def _import_error(name: str) -> str:
    module = {"simplejpeg": "simplejpeg", "torchvision": "torchvision.io"}.get(name, name)
    try:
        __import__(module)
    except Exception as error:  # report exactly why (torchvision fails in several ways)
        return f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"
    return "imports, but failed a decode check"


def print_loaders(rows: list[tuple[str, float, float]], workers: int) -> None:
    baseline = rows[0][1]
    print(f"\nloaders (img/s in one process, torch 1 thread = one worker; ratio vs {rows[0][0]})")
    for name, single, multi in rows:
        extra = f"   {workers} workers: {multi:7.0f} img/s" if workers > 0 else ""
        print(f"  {name:34s} {single:7.0f} img/s   x{single / baseline:5.2f}{extra}")


def pixel_accuracy(images: torch.Tensor, issame: np.ndarray) -> dict[str, float]:
    """10-fold accuracy of raw-pixel cosine similarity (plain, and with each image's mean removed)."""
    from marginface.evaluation.metrics import kfold_accuracy

    flat = images.flatten(1).numpy().astype(np.float64)
    out = {}
    for name, feats in (("raw", flat), ("mean-removed", flat - flat.mean(1, keepdims=True))):
        feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        out[name] = kfold_accuracy(np.einsum("nd,nd->n", feats[0::2], feats[1::2]), issame).mean
    return out


def tiny_cnn() -> torch.nn.Module:
    """~50k-parameter CNN on 56x56 inputs (112 average-pooled by 2) -> 64-d embedding."""
    from torch import nn

    def block(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.MaxPool2d(2))

    return nn.Sequential(nn.AvgPool2d(2), block(3, 16), block(16, 32), block(32, 64), block(64, 64),
                         nn.Flatten(), nn.Linear(64 * 3 * 3, 64), nn.BatchNorm1d(64))


def train_tiny_cnn(train: Dataset, num_classes: int, seconds: float) -> tuple[torch.nn.Module, int]:
    """Plain softmax (linear classifier + cross-entropy), flip augmentation, for ``seconds``; (net, steps)."""
    from torch import nn

    torch.manual_seed(0)
    x = torch.from_numpy(np.stack([train[i][0].numpy() for i in range(len(train))]))
    y = torch.tensor([train[i][1] for i in range(len(train))])
    net, head = tiny_cnn(), nn.Linear(64, num_classes)
    opt = torch.optim.AdamW([*net.parameters(), *head.parameters()], lr=3e-3, weight_decay=5e-4)
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        idx = torch.randint(len(x), (64,))
        batch = x[idx]
        flip = torch.rand(len(idx)) < 0.5
        batch[flip] = batch[flip].flip(-1)
        loss = nn.functional.cross_entropy(head(net(batch)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    return net.eval(), steps


def synthetic_check(cnn_seconds: float, seed: int = 0) -> None:
    """Held-out verification on synthetic identities: raw pixels vs a tiny CNN trained ``cnn_seconds``."""
    from marginface.data.synthetic import synthetic_splits
    from marginface.evaluation.metrics import kfold_accuracy

    start = time.perf_counter()
    train, images, issame = synthetic_splits(200, 100, 20, 600, seed)
    print(f"\nsynthetic check: 200 train ids x 20 images, 600 held-out pairs over 100 other ids "
          f"(rendered in {time.perf_counter() - start:.0f} s)")
    for name, accuracy in pixel_accuracy(images, issame).items():
        print(f"  pixels ({name}) 10-fold accuracy: {accuracy:.3f}")
    net, steps = train_tiny_cnn(train, train.num_classes, cnn_seconds)
    with torch.no_grad():
        emb = torch.nn.functional.normalize(net(images) + net(images.flip(-1)))
    scores = (emb[0::2] * emb[1::2]).sum(1).numpy()
    print(f"  tiny CNN + softmax, {steps} steps in {cnn_seconds:.0f} s: 10-fold accuracy "
          f"{kfold_accuracy(scores, issame).mean:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--source", choices=["celeba", "synthetic"], default="celeba")
    parser.add_argument("--repeats", type=int, default=5, help="decode passes (median)")
    parser.add_argument("--workers", type=int, default=2, help="also time N DataLoader workers (0: skip)")
    parser.add_argument("--rounds", type=int, default=3, help="loader passes per case (best counts)")
    parser.add_argument("--extra-python", help="another interpreter whose PIL is timed (e.g. pillow-simd)")
    parser.add_argument("--synthetic-check", action="store_true", help="pixel baseline vs a tiny CNN")
    parser.add_argument("--training", action="store_true", help="only the training-loader comparison (ours vs "
                        "ImageFolder + PIL, 0/1/2 workers)")
    parser.add_argument("--cnn-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root, prefix = Path(tmp) / "folder", Path(tmp) / "rec" / "train"
        what = build_folder(root, args.source, args.images)
        write_recordio(root, prefix)
        blobs = [p.read_bytes() for p in sorted(root.glob("*/*.jpg"))]
        print(f"{what}, {np.mean([len(b) for b in blobs]) / 1024:.1f} KiB each on average; "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        if args.training:
            print_training(training_table(root, prefix, args.rounds), image_folder_baseline(root)[1])
            return 0
        extra = time_extra_python(args.extra_python, root, args.repeats) if args.extra_python else None
        print_decode(time_decoders(blobs, args.repeats), extra)
        print_loaders(loader_table(root, prefix, args.images, args.workers, args.rounds), args.workers)
    if args.synthetic_check:
        synthetic_check(args.cnn_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
