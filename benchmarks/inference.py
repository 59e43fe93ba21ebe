"""Inference benchmarks: ONNX parity/latency per precision, LFW accuracy per precision, a 1M-identity gallery.

Usage:
    python benchmarks/inference.py parity [--backbones iresnet18,iresnet50,iresnet100,mobilefacenet | --model M]
    python benchmarks/inference.py lfw --model RUN/best.safetensors [--bin /work/cache/lfw.bin]
    python benchmarks/inference.py gallery [--n 1000000] [--dim 512]

parity: for each backbone, random-init weights whose BatchNorm statistics are fitted on real aligned faces
(so outputs depend on the input; with init statistics a random network maps every face to nearly the same
vector and any parity looks perfect), exported to ONNX fp32, fp16 and INT8 (calibrated on CelebA faces);
cosine of each against torch fp32 on real aligned LFW faces (no flip), and CPU time per image (batch 8,
default threads, best of 3 after a warm-up) as a ratio to torch fp32 measured in the same run.

lfw: a trained model's LFW 10-fold accuracy (the .bin's 6,000 pairs, flip TTA off) for torch fp32 and
onnxruntime fp32 / fp16 / INT8 (percentile and MinMax ranges), with the cosine to torch on the same faces; each
distinct image of the .bin is embedded once (LFW: 7,701 of 12,000 stored), its embedding reused by every pair.

gallery: synthetic 512-d templates with cluster structure (see ``synthetic_templates``): enrolment, save,
load, exact and IVF search ms/probe, recall@1 of IVF against exact, peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

LFW112, CELEBA112, LFW_BIN = "/work/cache/lfw112", "/work/cache/celeba112", "/work/cache/lfw.bin"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _aligned_faces_seeded(folder: str, count: int, seed: int) -> np.ndarray:
    from marginface.data.images import to_rgb_array
    from marginface.inference.export import aligned_face_files

    files = aligned_face_files(folder, count, seed)
    return np.stack([to_rgb_array(f).transpose(2, 0, 1) for f in files]).astype(np.float32)


def fit_batchnorm(model: torch.nn.Module, faces: np.ndarray) -> None:
    """BatchNorm running statistics from ``faces`` (RGB 0..255), cumulative average, then eval mode."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for i in range(0, len(faces), 16):
            model((torch.from_numpy(faces[i : i + 16]) - 127.5) / 127.5)
    model.eval()


def save_random_model(name: str, path: Path, faces: np.ndarray) -> Path:
    from safetensors.torch import save_file

    from marginface import backbones
    from marginface.inference import ModelCard, tensors_sha256

    torch.manual_seed(0)
    model = backbones.create(name, embedding_size=512)
    fit_batchnorm(model, faces)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    card = ModelCard(backbone=name, embedding_size=512, weights_sha256=tensors_sha256(state), source="benchmark")
    save_file(state, str(path), metadata=card.metadata())
    return path


def ms_per_image(model, faces: np.ndarray, batch: int = 8, repeats: int = 3) -> float:
    x = faces[:batch]
    model.forward(x)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model.forward(x)
        best = min(best, time.perf_counter() - start)
    return 1000 * best / len(x)


def export_variants(model_path: Path, out_dir: Path, calibration: np.ndarray, minmax: bool = False,
                    fp32_only: bool = False) -> dict[str, Path]:
    """fp32 / fp16 / int8 (percentile; with ``minmax`` also int8-minmax) ONNX files of ``model_path`` (one
    torch export; the others derived from it)."""
    from marginface.inference import export as ex
    from marginface.inference import load_model

    loaded = load_model(model_path)
    fp32 = out_dir / "raw_fp32.onnx"
    exporter = ex._export_fp32(loaded.runner, 112, fp32, 18)
    export_variants.last_exporter = exporter
    print(f"  exporter: {exporter}")
    if fp32_only:
        ex._write_with_card(fp32, out_dir / "fp32.onnx", loaded.card, "fp32", str(model_path))
        return {"fp32": out_dir / "fp32.onnx"}
    ex._to_fp16(fp32, out_dir / "raw_fp16.onnx")
    normalised = loaded.normalise_input(torch.from_numpy(calibration)).numpy()
    ex._quantize_int8(fp32, out_dir / "raw_int8.onnx", normalised, str(out_dir), "percentile")
    variants = ["fp32", "fp16", "int8"]
    if minmax:
        ex._quantize_int8(fp32, out_dir / "raw_int8-minmax.onnx", normalised, str(out_dir), "minmax")
        variants.append("int8-minmax")
    paths = {}
    for variant in variants:
        paths[variant] = out_dir / f"{variant}.onnx"
        ex._write_with_card(out_dir / f"raw_{variant}.onnx", paths[variant], loaded.card, variant.split("-")[0],
                            str(model_path))
    return paths


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def run_parity(args: argparse.Namespace) -> dict:
    from marginface.inference import load_model

    eval_faces = _aligned_faces_seeded(LFW112, args.faces, seed=1)
    calib = _aligned_faces_seeded(CELEBA112, args.calibration, seed=2)
    rows = {}
    for name in [args.model] if args.model else args.backbones.split(","):
        print(f"{name}:", flush=True)
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            tmp = Path(tmp)
            weights = Path(args.model) if args.model else save_random_model(name, tmp / "m.safetensors", calib[:32])
            source = load_model(weights)
            paths = export_variants(weights, tmp, calib, minmax=args.minmax, fp32_only=args.fp32_only)
            ref = source.forward(eval_faces)
            row = {"exporter": export_variants.last_exporter, "torch_fp32_ms": ms_per_image(source, eval_faces)}
            for precision, path in paths.items():
                model = load_model(path)
                cos = cosines(ref, model.forward(eval_faces))
                row[precision] = {"min_cos": float(cos.min()), "mean_cos": float(cos.mean()),
                                  "ms": ms_per_image(model, eval_faces)}
                row[precision]["ratio_to_torch"] = row[precision]["ms"] / row["torch_fp32_ms"]
            rows[name] = row
            print(f"  {json.dumps(row)}", flush=True)
    variants = [v for v in ("fp32", "fp16", "int8", "int8-minmax") if v in next(iter(rows.values()))]
    print("\nexporter per backbone: " + ", ".join(f"{n}: {r['exporter']}" for n, r in rows.items()))
    print("\n| backbone | torch fp32 ms/img | " + " | ".join(
        f"ORT {p} min cos / mean cos / time vs torch" for p in variants) + " |")
    print("|---|---|" + "---|" * len(variants))
    for name, row in rows.items():
        cells = [f"{row[p]['min_cos']:.6f} / {row[p]['mean_cos']:.6f} / {row[p]['ratio_to_torch']:.2f}x"
                 for p in variants]
        print(f"| {name} | {row['torch_fp32_ms']:.1f} | " + " | ".join(cells) + " |")
    return rows


def run_lfw(args: argparse.Namespace) -> dict:
    from marginface.data.bins import load_verification_bin, read_verification_bin
    from marginface.evaluation.verification import evaluate_interleaved
    from marginface.inference import load_model

    # A .bin stores an image once per pair that uses it (LFW: 12,000 entries, 7,701 distinct images); identical
    # encoded bytes decode to identical pixels, so each distinct image is embedded once and the pairs index it.
    encoded, _ = read_verification_bin(args.bin)
    images, issame = load_verification_bin(args.bin)
    distinct: dict[bytes, int] = {}
    rows = np.array([distinct.setdefault(data, len(distinct)) for data in encoded])
    first = np.unique(rows, return_index=True)[1]
    pixels = torch.clamp(images[torch.from_numpy(first)] * 127.5 + 127.5, 0, 255).numpy()
    print(f"{len(encoded):,} stored images, {len(pixels):,} distinct: embedding each distinct image once", flush=True)
    calib = _aligned_faces_seeded(CELEBA112, args.calibration, seed=2)
    results = {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        paths = export_variants(Path(args.model), Path(tmp), calib, minmax=True)
        models = {"torch fp32": load_model(args.model)}
        for p in args.variants.split(","):  # in this order: each variant's line is printed when it is done
            models[f"ORT {p}"] = load_model(paths[p])
        ref = None
        for label, model in models.items():
            start = time.perf_counter()
            emb = np.concatenate([model.embed_pixels(pixels[i : i + 256], flip=False)
                                  for i in range(0, len(pixels), 256)])
            seconds = time.perf_counter() - start
            acc = evaluate_interleaved(emb[rows], issame, name="lfw").accuracy
            ref = emb if ref is None else ref
            cos = cosines(ref, emb)
            results[label] = {"accuracy": float(acc.mean), "std": float(acc.std), "min_cos": float(cos.min()),
                              "mean_cos": float(cos.mean()), "seconds": seconds}
            print(f"{label}: {json.dumps(results[label])}", flush=True)
    print("\n| model | LFW 10-fold acc (± std) | cosine to torch min / mean | embed time vs torch |")
    print("|---|---|---|---|")
    base = results["torch fp32"]["seconds"]
    for label, r in results.items():
        print(f"| {label} | {100 * r['accuracy']:.2f} ± {100 * r['std']:.2f} | {r['min_cos']:.5f} / "
              f"{r['mean_cos']:.5f} | {r['seconds'] / base:.2f}x |")
    return results


def synthetic_templates(n: int, dim: int, seed: int = 0, clusters: int = 1000, chunk: int = 100_000):
    """Yield (chunk, dim) float32 unit templates with cluster structure, and a matching probe maker.

    How they are made: a random orthogonal basis with a power-law spectrum (variance of component j
    proportional to (j + 1)^-0.5, as the PCA spectrum of face embeddings decays), ``clusters`` cluster centres
    drawn from it, and each identity = normalise(0.6 * its cluster centre + 0.8 * own anisotropic noise), so
    identities of one cluster have cosines around 0.35 with each other (look-alike groups) and random pairs
    around 0. A probe of identity i is normalise(t_i + noise) with cosine ~0.7 to t_i (a genuine pair).
    """
    rng = np.random.default_rng(seed)
    scale = ((np.arange(dim) + 1.0) ** -0.25).astype(np.float32)
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0].astype(np.float32)

    def draw(m: int) -> np.ndarray:
        return _unit((rng.standard_normal((m, dim), dtype=np.float32) * scale) @ basis)

    centres = draw(clusters)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        own = draw(m)
        yield _unit(0.6 * centres[rng.integers(0, clusters, m)] + 0.8 * own)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_probes(templates: np.ndarray, rows: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = _unit(rng.standard_normal((len(rows), templates.shape[1]), dtype=np.float32))
    return _unit(templates[rows] + 1.0 * noise)  # cos(probe, template) ~ 1/sqrt(2) ~ 0.71


def run_gallery(args: argparse.Namespace) -> dict:
    from marginface.inference.gallery import Gallery
    from marginface.models.card import ModelCard

    card = ModelCard(backbone="synthetic", embedding_size=args.dim, weights_sha256="0" * 64)
    out: dict = {"n": args.n, "dim": args.dim}
    gallery = Gallery.create(card)
    gallery.reserve(args.n)
    start, added = time.perf_counter(), 0
    for block in synthetic_templates(args.n, args.dim):
        gallery.add_many([f"id{added + i}" for i in range(len(block))], block, card)
        added += len(block)
    out["enrol_s"] = time.perf_counter() - start  # includes generating the vectors
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        start = time.perf_counter()
        gallery.save(Path(tmp) / "g")
        out["save_s"] = time.perf_counter() - start
        del gallery
        start = time.perf_counter()
        gallery = Gallery.load(Path(tmp) / "g")
        out["load_s"] = time.perf_counter() - start
        out["disk_gb"] = sum(f.stat().st_size for f in (Path(tmp) / "g").rglob("*") if f.is_file()) / 2**30
    rows = np.random.default_rng(1).choice(args.n, args.probes, replace=False)
    probes = make_probes(gallery.vectors, rows, seed=2)
    single = probes[: args.single]
    start = time.perf_counter()
    for p in single:
        gallery.search_rows(p[None], 1, exact=True)
    out["exact_ms_single"] = 1000 * (time.perf_counter() - start) / len(single)
    start = time.perf_counter()
    exact_scores, exact_rows = gallery.search_rows(probes, 10, exact=True)
    out["exact_ms_batched"] = 1000 * (time.perf_counter() - start) / len(probes)
    out["exact_top1_is_true_identity"] = float((exact_rows[:, 0] == rows).mean())
    start = time.perf_counter()
    gallery._ivf()
    out["ivf_build_s"] = time.perf_counter() - start
    out["ivf_nlist"] = int(gallery._index["ivf"][0].nlist)
    out["ivf"] = {}
    for nprobe in args.nprobe:
        gallery.nprobe = nprobe
        gallery._index["ivf"][0].nprobe = nprobe
        start = time.perf_counter()
        for p in single:
            gallery.search_rows(p[None], 1, exact=False)
        ms_single = 1000 * (time.perf_counter() - start) / len(single)
        start = time.perf_counter()
        _, approx = gallery.search_rows(probes, 10, exact=False)
        ms_batched = 1000 * (time.perf_counter() - start) / len(probes)
        recall = float((approx[:, 0] == exact_rows[:, 0]).mean())
        out["ivf"][nprobe] = {"ms_single": ms_single, "ms_batched": ms_batched, "recall_at_1_vs_exact": recall}
        print(f"nprobe {nprobe}: {out['ivf'][nprobe]}", flush=True)
    out["peak_rss_gb"] = peak_rss_gb()
    print(json.dumps(out, indent=1))
    print(f"\nexact: {out['exact_ms_single']:.1f} ms/probe one at a time, {out['exact_ms_batched']:.2f} ms/probe in "
          f"a batch of {args.probes}; load {out['load_s']:.1f} s, save {out['save_s']:.1f} s, "
          f"enrol {out['enrol_s']:.1f} s")
    for nprobe, r in out["ivf"].items():
        print(f"IVF nlist {out['ivf_nlist']} nprobe {nprobe}: {r['ms_single']:.2f} ms/probe single "
              f"({out['exact_ms_single'] / r['ms_single']:.0f}x faster), {r['ms_batched']:.3f} batched "
              f"({out['exact_ms_batched'] / r['ms_batched']:.0f}x), recall@1 vs exact {r['recall_at_1_vs_exact']:.4f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["parity", "lfw", "gallery"])
    parser.add_argument("--backbones", default="iresnet18,iresnet50,iresnet100,mobilefacenet")
    parser.add_argument("--faces", type=int, default=32, help="parity: real LFW faces compared")
    parser.add_argument("--calibration", type=int, default=128, help="INT8 calibration faces (CelebA)")
    parser.add_argument("--minmax", action="store_true", help="parity: also INT8 with MinMax activation ranges")
    parser.add_argument("--fp32-only", action="store_true", help="parity: export and compare fp32 only")
    parser.add_argument("--model", help="lfw: the trained model; parity: use this trained model instead of "
                        "random-init backbones")
    parser.add_argument("--bin", default=LFW_BIN)
    parser.add_argument("--variants", default="fp32,fp16,int8,int8-minmax",
                        help="lfw: onnxruntime variants measured after torch fp32, in this order")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--single", type=int, default=20, help="probes timed one at a time")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--tmp", default=None, help="folder for temporary files (default: the system's)")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    result = {"parity": run_parity, "lfw": run_lfw, "gallery": run_gallery}[args.part](args)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
