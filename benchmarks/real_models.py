"""Real pretrained models (../shared/models) on LFW: 10-fold accuracy with flip TTA on and off from one pass.

Usage:
    python benchmarks/real_models.py lfw --model ../shared/models/insightface_mobilefacenet_y1/model \\
        --bin /work/cache/i29/lfw.bin --cache /work/cache/i29/y1.lfw.npz
    python benchmarks/real_models.py calibrate --bin /work/cache/i29/lfw.bin --cache /work/cache/i29/y1.lfw.npz
    python benchmarks/real_models.py identify --bin /work/cache/i29/lfw.bin --cache /work/cache/i29/y1.lfw.npz \\
        --pairs ../shared/data/lfw/pairs.txt [--distractors celeba.npz cfp.npz=list_name.txt --exclude-ids FILE]

calibrate: the threshold at FAR 1e-3 chosen on 9 folds (:func:`marginface.inference.calibrate.calibrate_scores`,
the function ``marginface calibrate`` uses) and TAR/FAR measured on the 10th, for all 10 rotations, on the
cached embeddings (flip on, the card's default). identify: the distinct images of the .bin named by pairs.txt;
every identity with >= 2 of them enrols its first image (by file name) and probes with the others; the identities
with one image join the gallery as distractors in a second run; rank-1 / rank-5 by exact search. With
``--distractors`` (``marginface clean embed`` .npz files of the same model and flip setting), a third run adds
one image per distractor identity (its first by name, as the LFW gallery enrols) after dropping the identities
named in ``--exclude-ids`` and those whose name (``PATH=NAMES.txt``: line i names identity i, CFP's
``list_name.txt``) is an LFW person's (``--lfw-dir``'s folders and the pairs' people; spelling variants too,
:func:`name_matches`).

export: the model exported to ONNX fp32 / fp16 / INT8 (static, QDQ, percentile ranges calibrated on
``--calibration`` aligned CelebA faces) with benchmarks/inference.py's ``export_variants``; every distinct LFW
image embedded by each variant (flip off); cosine to torch fp32 (the cached raw outputs), LFW 10-fold accuracy,
TAR@FAR=1e-3, and CPU ms/image at batch 8 (best of 3) as a ratio to torch fp32 measured in the same run.

Each distinct image of the ``.bin`` (LFW: 7,701 of 12,000 stored) is embedded once, as is its mirror, through
:func:`marginface.inference.load_model` (the model's own contract: channel order, normalisation). The raw
(un-normalised) outputs are kept in ``--cache`` (resumed from there, written every few batches), so flip on
(``normalise(f(x) + f(mirror x))``, insightface's rule, what ``marginface eval`` does) and flip off
(``normalise(f(x))``) come from the same forward passes. The pairs then go through the same functions as
``marginface eval --bins`` (:func:`marginface.evaluation.verification.evaluate_interleaved`: cosine, 10
contiguous folds of 600 pairs, threshold chosen on the other nine).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import torch


def distinct_pixels(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct images (M, 3, 112, 112) uint8 RGB, rows (2N,) index of each stored image, issame (N,))."""
    from PIL import Image

    from marginface.data.bins import read_verification_bin

    encoded, issame = read_verification_bin(path)
    distinct: dict[bytes, int] = {}
    rows = np.array([distinct.setdefault(data, len(distinct)) for data in encoded])
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in distinct])
    return pixels.transpose(0, 3, 1, 2), rows, np.asarray(issame)


def embed_raw(model_path: str, pixels: np.ndarray, cache: Path, batch: int = 64,
              mirror: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Raw outputs of every image and of its mirror (skipped without ``mirror``: an empty (0, D) array),
    (M, D) each; resumable through ``cache`` (.npz)."""
    from marginface.models.load import load_model

    model = load_model(model_path)
    done = np.load(cache) if cache.is_file() else None
    raw = list(done["raw"]) if done is not None else []
    mirrored = list(done["mirrored"]) if done is not None else []
    start = time.perf_counter()
    for i in range(len(raw), len(pixels), batch):
        chunk = torch.from_numpy(pixels[i : i + batch].astype(np.float32))
        raw += list(model.forward(chunk))
        if mirror:
            mirrored += list(model.forward(chunk.flip(3)))
        if (i // batch) % 10 == 9 or i + batch >= len(pixels):
            np.savez(cache, raw=np.array(raw), mirrored=np.array(mirrored))
            rate = (len(raw) - (0 if done is None else len(done["raw"]))) / (time.perf_counter() - start)
            print(f"  {len(raw):,}/{len(pixels):,} images ({rate:.1f} img/s{', x2 with mirrors' if mirror else ''})",
                  flush=True)
    return np.array(raw), np.array(mirrored)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run_lfw(args: argparse.Namespace) -> dict:
    from marginface.evaluation.verification import evaluate_interleaved

    pixels, rows, issame = distinct_pixels(args.bin)
    print(f"{len(rows):,} stored images, {len(pixels):,} distinct", flush=True)
    raw, mirrored = embed_raw(args.model, pixels, Path(args.cache), args.batch, not args.no_flip)
    out = {}
    variants = [("no flip", _unit(raw))] if args.no_flip else [("flip", _unit(raw + mirrored)), ("no flip", _unit(raw))]
    for label, emb in variants:
        result = evaluate_interleaved(emb[rows], issame, name="lfw")
        acc = result.accuracy
        out[label] = {"accuracy": float(acc.mean), "std": float(acc.std),
                      "tar_at_far_1e-3": float(result.tar_at_far.tar[list(result.tar_at_far.far).index(1e-3)])}
        print(f"{label:8s} LFW {100 * acc.mean:.2f} ± {100 * acc.std:.2f}%  "
              f"TAR@FAR=1e-3 {100 * out[label]['tar_at_far_1e-3']:.2f}%", flush=True)
    return out


def _flip_embeddings(cache: str) -> np.ndarray:
    data = np.load(cache)
    return _unit(data["raw"] + data["mirrored"])


def run_calibrate(args: argparse.Namespace) -> dict:
    from marginface.evaluation import metrics
    from marginface.inference.calibrate import calibrate_scores

    rows, issame = _rows_issame(args.bin)
    emb = _flip_embeddings(args.cache)[rows]
    scores = (emb[0::2].astype(np.float64) * emb[1::2]).sum(1)
    folds = np.arange(len(issame)) // (len(issame) // 10)
    table, accepted, impostors, hits, genuine = [], 0, 0, 0, 0
    for k in range(10):
        train, test = folds != k, folds == k
        cal = calibrate_scores(scores[train], issame[train], args.far, data=f"LFW folds != {k + 1}")
        accept = scores[test] >= cal.threshold
        far = float((accept & ~issame[test]).sum() / (~issame[test]).sum())
        tar = float((accept & issame[test]).sum() / issame[test].sum())
        accepted, impostors = accepted + int((accept & ~issame[test]).sum()), impostors + int((~issame[test]).sum())
        hits, genuine = hits + int((accept & issame[test]).sum()), genuine + int(issame[test].sum())
        table.append({"fold": k + 1, "threshold": cal.threshold, "train_far": cal.achieved_far, "test_far": far,
                      "test_tar": tar})
        print(f"fold {k + 1:2d}: threshold {cal.threshold:.4f} (FAR on the 9 folds {cal.achieved_far:.2e}, TAR "
              f"{cal.tar:.4f}) -> held-out FAR {far:.4f} ({int((accept & ~issame[test]).sum())}/"
              f"{int((~issame[test]).sum())}), TAR {tar:.4f}", flush=True)
    pooled = {"far": accepted / impostors, "tar": hits / genuine, "accepted_impostors": accepted,
              "impostors": impostors}
    full = metrics.tar_at_far(scores, issame, [args.far])
    print(f"pooled over the 10 held-out folds: FAR {pooled['far']:.2e} ({accepted}/{impostors}) for a target of "
          f"{args.far:g}; TAR {pooled['tar']:.4f}; threshold {np.mean([r['threshold'] for r in table]):.4f} ± "
          f"{np.std([r['threshold'] for r in table]):.4f}; TAR@FAR on all 6,000 pairs {full.tar[0]:.4f}")
    return {"folds": table, "pooled": pooled}


def _rows_issame(path: str) -> tuple[np.ndarray, np.ndarray]:
    from marginface.data.bins import read_verification_bin

    encoded, issame = read_verification_bin(path)
    distinct: dict[bytes, int] = {}
    return np.array([distinct.setdefault(data, len(distinct)) for data in encoded]), np.asarray(issame)


def _name_key(name: str) -> str:
    """'George_W_Bush' / 'George W Bush' / 'george-w bush' -> 'george w bush' (names compared across datasets)."""
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def name_matches(name: str, keys: list[str], similarity: float) -> bool:
    """Whether ``name`` is one of ``keys`` (from :func:`_name_key`) allowing for spelling: exact, or every word of
    one is a word of the other (>= 2 words: 'George Bush' ~ 'George W Bush', 'Catherine Zeta' ~ 'Catherine Zeta
    Jones'), or a difflib ratio >= ``similarity`` ('Jennifer Anniston' ~ 'Jennifer Aniston'; 1.0: exact only).

    CFP spells some LFW people differently; an exact-name rule left 8 of them in the gallery as "strangers" and
    they took rank-1 from their own LFW images.
    """
    import difflib

    key = _name_key(name)
    if key in keys:
        return True
    if similarity >= 1.0:
        return False
    words = set(key.split())
    for other in keys:
        small, big = sorted((words, set(other.split())), key=len)
        if len(small) >= 2 and small <= big:
            return True
    return bool(difflib.get_close_matches(key, keys, n=1, cutoff=similarity))


def read_id_list(path: str) -> set[str]:
    """Identity ids, one per line (first token; '#' comments and blank lines skipped), e.g.
    configs/celeba299_exclude_test_overlap.txt."""
    ids = set()
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.add(line.split()[0])
    return ids


def load_distractors(specs: list[str], exclude_ids: set[str] = frozenset(), avoid_names: set[str] = frozenset(),
                     similarity: float = 0.85) -> tuple[np.ndarray, list[dict]]:
    """One unit embedding per distractor identity from ``marginface clean embed`` .npz files.

    Each spec is ``PATH`` or ``PATH=NAMES``: the .npz holds ``names`` ('identity/file.jpg', (N,)) and
    ``embeddings`` (N, D); every identity contributes its first image by name (a distractor is an enrolled
    person, enrolled like the LFW gallery: one image). Identities in ``exclude_ids`` are dropped, and with a
    NAMES file (line i names identity ``int(id) == i``, 1-based: CFP's Data/list_name.txt) so are those whose
    name matches one of ``avoid_names`` (:func:`name_matches` at ``similarity``). Returns ((K, D) float32 rows,
    a summary per file: identities, excluded_ids, lfw_name_matches (the names), kept).
    """
    avoid = sorted({_name_key(n) for n in avoid_names})
    rows, summary = [], []
    for spec in specs:
        path, _, names_file = spec.partition("=")
        with np.load(path, allow_pickle=False) as data:
            if "names" not in data.files or "embeddings" not in data.files:
                raise ValueError(f"{path} has {data.files}; expected 'names' and 'embeddings' "
                                 "(the .npz `marginface clean embed` writes)")
            names, emb = data["names"], np.asarray(data["embeddings"], np.float64)
        if emb.ndim != 2 or len(names) != len(emb):
            raise ValueError(f"{path}: {len(names)} names for embeddings of shape {emb.shape}")
        first: dict[str, int] = {}
        for i in sorted(range(len(names)), key=lambda i: str(names[i])):
            first.setdefault(str(names[i]).split("/")[0], i)
        labels = _identity_names(names_file, first) if names_file else {}
        excluded = sorted(set(first) & set(exclude_ids))
        matches = sorted(k for k, name in labels.items() if k not in excluded and name_matches(name, avoid, similarity))
        keep = [i for k, i in first.items() if k not in excluded and k not in matches]
        if not np.isfinite(emb[keep]).all():
            raise ValueError(f"{path} holds NaN/inf embeddings; re-embed it")
        rows.append(_unit(emb[keep]) if keep else np.zeros((0, emb.shape[1])))
        summary.append({"file": spec, "identities": len(first), "excluded_ids": len(excluded),
                        "lfw_name_matches": len(matches), "matched_names": [labels[k] for k in matches],
                        "kept": len(keep)})
    if len({r.shape[1] for r in rows}) > 1:
        raise ValueError(f"--distractors differ in embedding size ({[r.shape[1] for r in rows]}): use one model")
    return np.concatenate(rows).astype(np.float32), summary


def _identity_names(path: str, identities: dict[str, int]) -> dict[str, str]:
    """identity id ('001') -> its name, line int(id) of ``path`` (1-based)."""
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    out = {}
    for k in identities:
        if not k.isdigit() or not 1 <= int(k) <= len(lines):
            raise ValueError(f"identity {k!r} has no line in {path} ({len(lines)} lines): a NAMES file maps "
                             "numeric identities 1..N to names (CFP's Data/list_name.txt)")
        out[k] = lines[int(k) - 1]
    return out


def run_identify(args: argparse.Namespace) -> dict:
    from marginface.data.pairs import read_pairs
    from marginface.evaluation.identification import build_index, identify

    rows, _ = _rows_issame(args.bin)
    names = [name for pair in read_pairs(args.pairs, header="optional").names for name in pair]
    if len(names) != len(rows):
        raise ValueError(f"{args.pairs} names {len(names)} images but {args.bin} stores {len(rows)}")
    files = {}
    for name, row in zip(names, rows):
        files.setdefault(int(row), name)  # distinct row -> 'Person/Person_0001.jpg'-style name
    emb = _flip_embeddings(args.cache)
    people: dict[str, list[tuple[str, int]]] = {}
    for row, name in files.items():
        people.setdefault(name.split("/")[0], []).append((name, row))
    several = sorted(p for p, items in people.items() if len(items) >= 2)
    single = [sorted(people[p])[0][1] for p in people if len(people[p]) == 1]
    gallery_rows = [sorted(people[p])[0][1] for p in several]
    probe_rows = [row for p in several for _, row in sorted(people[p])[1:]]
    probe_labels = np.array([i for i, p in enumerate(several) for _ in sorted(people[p])[1:]])
    out = {"identities": len(several), "probes": len(probe_rows), "single_image_people": len(single)}
    runs = [("gallery only", None), ("+ one-image people", emb[single])]
    if args.distractors:
        avoid = set(people) | ({p.name for p in Path(args.lfw_dir).iterdir() if p.is_dir()} if args.lfw_dir else set())
        exclude = read_id_list(args.exclude_ids) if args.exclude_ids else set()
        extra, summary = load_distractors(args.distractors, exclude, avoid, args.name_similarity)
        if extra.shape[1] != emb.shape[1]:
            raise ValueError(f"--distractors are {extra.shape[1]}-d but {args.cache} is {emb.shape[1]}-d: embed "
                             "them with the same model")
        out["distractor_files"] = summary
        for item in summary:
            print(f"{item['file']}: {item['identities']} identities, {item['kept']} kept "
                  f"({item['excluded_ids']} by --exclude-ids, {item['lfw_name_matches']} named as LFW people)")
        runs.append(("+ one-image people + distractors", np.concatenate([emb[single], extra])))
    for label, distractors in runs:
        index = build_index(emb[gallery_rows], np.arange(len(several)), distractors)
        result = identify(index, emb[probe_rows], probe_labels, max_rank=5)
        out[label] = {"rank1": float(result.cmc[0]), "rank5": float(result.cmc[4]),
                      "gallery_size": len(several) + (0 if distractors is None else len(distractors))}
        print(f"{label}: {len(several)} identities (+{0 if distractors is None else len(distractors)} distractors), "
              f"{len(probe_rows)} probes: rank-1 {100 * result.cmc[0]:.2f}%, rank-5 {100 * result.cmc[4]:.2f}%")
    return out


def run_export(args: argparse.Namespace) -> dict:
    import sys
    import tempfile

    from marginface.evaluation.verification import evaluate_interleaved
    from marginface.models.load import load_model

    sys.path.insert(0, str(Path(__file__).parent))
    from inference import _aligned_faces_seeded, export_variants, ms_per_image

    pixels, rows, issame = distinct_pixels(args.bin)
    if args.images:  # cosines on the first N distinct images only (no accuracy: the pairs need them all)
        return _export_cosines(args, pixels[: args.images])
    calibration = _aligned_faces_seeded(args.celeba, args.calibration, seed=2)
    timing = pixels[:8].astype(np.float32)
    out = {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        paths = export_variants(Path(args.model), Path(tmp), calibration)
        torch_model = load_model(args.model)
        for variant in args.variants.split(","):
            model = load_model(paths[variant])
            start = time.perf_counter()
            emb = np.concatenate([model.embed_pixels(pixels[i : i + 64].astype(np.float32), flip=False)
                                  for i in range(0, len(pixels), 64)])
            seconds = time.perf_counter() - start
            np.save(Path(args.cache).with_suffix(f".{variant}.npy"), emb)
            # latency: the variant and torch timed back to back, so the ratio shares the machine's load
            ratio = ms_per_image(model, timing) / ms_per_image(torch_model, timing)
            reference = _wait_for_reference(args.cache, len(pixels))
            cos = (emb.astype(np.float64) * reference).sum(1)
            out[f"ORT {variant}"] = _row(evaluate_interleaved(emb[rows], issame, name="lfw"), float(cos.min()),
                                         float(cos.mean()), ratio)
            out[f"ORT {variant}"]["embed_seconds"] = seconds
            if "torch fp32" not in out:
                out["torch fp32"] = _row(evaluate_interleaved(reference[rows], issame, name="lfw"), 1.0, 1.0, 1.0)
                _print_row("torch fp32", out["torch fp32"])
            _print_row(f"ORT {variant}", out[f"ORT {variant}"])
    return out


def _export_cosines(args: argparse.Namespace, pixels: np.ndarray) -> dict:
    """Cosine of each variant (INT8 MinMax included) to the cached torch fp32 outputs on ``pixels``."""
    import tempfile

    from inference import _aligned_faces_seeded, export_variants
    from marginface.models.load import load_model

    calibration = _aligned_faces_seeded(args.celeba, args.calibration, seed=2)
    reference = _unit(np.load(args.cache)["raw"][: len(pixels)])
    out = {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        paths = export_variants(Path(args.model), Path(tmp), calibration, minmax=True)
        for variant in args.variants.split(","):
            emb = load_model(paths[variant]).embed_pixels(pixels.astype(np.float32), flip=False)
            cos = (emb.astype(np.float64) * reference).sum(1)
            out[variant] = {"cos_min": float(cos.min()), "cos_mean": float(cos.mean()), "images": len(pixels)}
            print(f"{variant}: cosine to torch fp32 on {len(pixels)} LFW images min {cos.min():.4f} mean "
                  f"{cos.mean():.4f}", flush=True)
    return out


def _wait_for_reference(cache: str, count: int) -> np.ndarray:
    """The torch fp32 outputs (unit rows) from the lfw run's cache, waiting until that run has written them all."""
    while not Path(cache).is_file() or len(np.load(cache)["raw"]) < count:
        time.sleep(30)
    return _unit(np.load(cache)["raw"])


def _print_row(label: str, row: dict) -> None:
    print(f"{label:12s} LFW {100 * row['accuracy']:.2f} ± {100 * row['std']:.2f}%  TAR@FAR=1e-3 "
          f"{100 * row['tar_at_far_1e-3']:.2f}%  cosine to torch min {row['cos_min']:.6f} mean "
          f"{row['cos_mean']:.6f}  time {row['ratio_to_torch']:.2f}x torch", flush=True)


def _row(result, cos_min: float, cos_mean: float, ratio: float) -> dict:
    far = list(result.tar_at_far.far).index(1e-3)
    return {"accuracy": float(result.accuracy.mean), "std": float(result.accuracy.std),
            "tar_at_far_1e-3": float(result.tar_at_far.tar[far]), "cos_min": cos_min, "cos_mean": cos_mean,
            "ratio_to_torch": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    lfw = sub.add_parser("lfw")
    lfw.add_argument("--model", required=True)
    lfw.add_argument("--bin", default="/work/cache/lfw.bin")
    lfw.add_argument("--cache", required=True, help=".npz of raw embeddings (resumed)")
    lfw.add_argument("--batch", type=int, default=64)
    lfw.add_argument("--no-flip", action="store_true", help="embed the images only, not their mirrors (half the time)")
    cal = sub.add_parser("calibrate")
    cal.add_argument("--bin", default="/work/cache/lfw.bin")
    cal.add_argument("--cache", required=True)
    cal.add_argument("--far", type=float, default=1e-3)
    ident = sub.add_parser("identify")
    ident.add_argument("--bin", default="/work/cache/lfw.bin")
    ident.add_argument("--cache", required=True)
    ident.add_argument("--pairs", required=True)
    ident.add_argument("--distractors", nargs="+", metavar="NPZ[=NAMES]",
                       help="`marginface clean embed` .npz files (same model, same flip) whose identities join the "
                            "gallery, one image each; =NAMES: a list_name.txt naming identity i on line i")
    ident.add_argument("--exclude-ids", help="identity ids to leave out of --distractors (one per line, # comments)")
    ident.add_argument("--lfw-dir", help="LFW's person folders: a --distractors identity named like one is dropped "
                                         "(the pairs' people always are)")
    ident.add_argument("--name-similarity", type=float, default=0.85,
                       help="difflib ratio at which a distractor's name counts as an LFW person's (1: exact only)")
    export = sub.add_parser("export")
    export.add_argument("--model", required=True, help="a torch-loadable model (e.g. the converted .safetensors)")
    export.add_argument("--bin", default="/work/cache/lfw.bin")
    export.add_argument("--cache", required=True, help="the lfw run's .npz of this model (torch fp32 outputs)")
    export.add_argument("--celeba", default="/work/cache/celeba112", help="aligned CelebA faces (INT8 ranges)")
    export.add_argument("--calibration", type=int, default=128)
    export.add_argument("--variants", default="int8,fp16,fp32")
    export.add_argument("--tmp", default="/work/cache")
    export.add_argument("--images", type=int, default=0, help="cosines only, on the first N distinct images")
    args = parser.parse_args()
    run = {"lfw": run_lfw, "calibrate": run_calibrate, "identify": run_identify, "export": run_export}[args.command]
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
