"""A small synthetic IJB release in the real layout and file formats, written by the tests (nothing committed).

Subjects are synthetic identities (``marginface.data.synthetic.render_face``; 24 by default: ~400 loose crops,
~200 media in 96 templates). Each subject has 4 templates: template 0 is its 1:N gallery template (even subjects
in G1, odd in G2), templates 1-3 are probes; 1:1 pairs are every (template 0 or 1) x (template 2 or 3) of all
subjects. A template holds 1-3 media, a media is a still (1 image) or a "video" (2-4 frames); one media id is
shared by two templates of a subject (frames of one video in two templates), so media pooling must group by
(template, media). A loose crop is the 112x112 render placed in a 150x150 canvas by a random similarity
transform; its five points are the ArcFace template mapped the same way. Lines are shuffled, ids are sparse.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from marginface.align.template import ARCFACE_TEMPLATE_112
from marginface.data.synthetic import render_face

CANVAS = 150


@dataclass
class Truth:
    names: list[str]
    templates: np.ndarray
    medias: np.ndarray
    subjects: np.ndarray  # subject of each image
    landmarks: np.ndarray
    scores: np.ndarray
    renders: dict[str, np.ndarray]
    pairs: np.ndarray
    issame: np.ndarray
    galleries: dict[str, tuple[np.ndarray, np.ndarray]]
    probes: tuple[np.ndarray, np.ndarray]


def _place(render: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    scale, angle = rng.uniform(0.85, 1.2), np.deg2rad(rng.uniform(-15, 15))
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shift = np.array([CANVAS / 2, CANVAS / 2]) + rng.uniform(-8, 8, 2) - rot @ np.array([56.0, 56.0])
    matrix = np.hstack([rot, shift[:, None]])
    canvas = cv2.warpAffine(render, matrix, (CANVAS, CANVAS), flags=cv2.INTER_LINEAR, borderValue=(90, 90, 90))
    return canvas, ARCFACE_TEMPLATE_112 @ rot.T + shift


def write_synthetic_ijb(root: Path, prefix: str = "ijbc", num_subjects: int = 24, seed: int = 0) -> Truth:
    """Write ``root/loose_crop`` and ``root/meta`` (see the module docstring) and return what was written."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "loose_crop").mkdir(parents=True)
    (root / "meta").mkdir()
    rows, renders = [], {}  # (name, template, media, subject)
    template_of = {}  # (subject, k) -> template id
    next_media, frame = 70000, 0
    for s in range(num_subjects):
        shared_media = None
        for k in range(4):
            template = 1000 + 7 * (4 * s + k)
            template_of[s, k] = template
            for _ in range(rng.integers(1, 4)):
                if k == 2 and shared_media is not None:
                    media, shared_media = shared_media, None  # more frames of a video used in template k=1
                else:
                    next_media += int(rng.integers(1, 50))
                    media = next_media
                if k == 1 and shared_media is None:
                    shared_media = media
                for _ in range(1 if rng.uniform() < 0.5 else int(rng.integers(2, 5))):
                    frame += 1
                    rows.append((f"{frame}.jpg", template, media, s))
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    landmarks, scores = [], []
    for name, _, _, s in rows:
        render = render_face(seed, s, int(name.split(".")[0]))
        canvas, points = _place(render, rng)
        Image.fromarray(canvas).save(root / "loose_crop" / name, quality=95)
        renders[name] = render
        landmarks.append(np.round(points, 3))
        scores.append(round(float(rng.uniform(0.3, 1.0)), 3))
    meta = root / "meta"
    with open(meta / f"{prefix}_name_5pts_score.txt", "w") as f:
        for (name, *_), points, score in zip(rows, landmarks, scores):
            f.write(" ".join([name, *(f"{v:.3f}" for v in points.ravel()), f"{score:.3f}"]) + "\n")
    with open(meta / f"{prefix}_face_tid_mid.txt", "w") as f:
        f.writelines(f"{name} {t} {m}\n" for name, t, m, _ in rows)
    pairs = np.array([(template_of[a, i], template_of[b, j]) for a in range(num_subjects) for i in (0, 1)
                      for b in range(num_subjects) for j in (2, 3)], dtype=np.int64)
    subject_of = {t: s for (s, _), t in template_of.items()}
    issame = np.array([subject_of[a] == subject_of[b] for a, b in pairs])
    with open(meta / f"{prefix}_template_pair_label.txt", "w") as f:
        f.writelines(f"{a} {b} {int(y)}\n" for (a, b), y in zip(pairs, issame))
    names = {"ijbc": ("G1", "G2"), "ijbb": ("S1", "S2")}[prefix]
    subject_id = {s: 5000 + 3 * s for s in range(num_subjects)}
    galleries = {}
    for g, parity in zip(names, (0, 1)):
        members = [(template_of[s, 0], subject_id[s]) for s in range(num_subjects) if s % 2 == parity]
        _write_csv(meta / f"{prefix}_1N_gallery_{g}.csv", rows, dict(members))
        galleries[g] = tuple(np.array(c, dtype=np.int64) for c in zip(*sorted(members)))
    probes = sorted((template_of[s, k], subject_id[s]) for s in range(num_subjects) for k in (1, 2, 3))
    _write_csv(meta / f"{prefix}_1N_probe_mixed.csv", rows, dict(probes))
    return Truth([r[0] for r in rows], np.array([r[1] for r in rows]), np.array([r[2] for r in rows]),
                 np.array([r[3] for r in rows]), np.array(landmarks), np.array(scores), renders, pairs, issame,
                 galleries, tuple(np.array(c, dtype=np.int64) for c in zip(*probes)))


def _write_csv(path: Path, rows: list[tuple], subject_of_template: dict[int, int]) -> None:
    """Official 1:N columns (first three): one row per image of each listed template."""
    with open(path, "w") as f:
        f.write("TEMPLATE_ID,SUBJECT_ID,FILENAME\n")
        for name, template, _, _ in sorted(rows, key=lambda r: r[1]):
            if template in subject_of_template:
                f.write(f"{template},{subject_of_template[template]},img/{name}\n")
