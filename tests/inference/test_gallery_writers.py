"""Several writers of one gallery folder, as real processes: no identity is ever lost silently."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from marginface.inference.card import ModelCard
from marginface.inference.gallery import Gallery, GalleryConflictError

D = 16
SRC = str(Path(__file__).resolve().parents[2] / "src")

# A writer process: waits for the GO file (so that both are loaded before either saves), then adds 6 identities.
_WRITER = textwrap.dedent("""
    import os, sys, time
    from types import SimpleNamespace
    import numpy as np
    from marginface.inference.gallery import Gallery, GalleryConflictError

    folder, tag, mode, go = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    # what Gallery reads of a ModelCard (the real card module imports torch: seconds per process)
    card = SimpleNamespace(compatibility_key=sys.argv[5], embedding_size=16, to_json=lambda: "{}")
    vectors = np.random.default_rng(abs(hash(tag)) % 1000).normal(size=(6, 16))
    names = [f"{tag}{i}" for i in range(6)]

    def change(gallery):
        gallery.add_many(names, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), card)
        time.sleep(0.3)  # widen the window between load and save

    if mode == "plain":  # load (or create), change, save: the optimistic check must refuse the later save
        gallery = Gallery.load(folder) if os.path.exists(os.path.join(folder, "CURRENT")) else Gallery.create(card)
    while not os.path.exists(go):
        time.sleep(0.01)
    try:
        if mode == "plain":
            change(gallery)
            gallery.save(folder)
        else:  # Gallery.update: load under the lock, change, save
            with Gallery.update(folder, card) as gallery:
                change(gallery)
    except GalleryConflictError as err:
        print(err, file=sys.stderr)
        sys.exit(3)
""")


def _card():
    return ModelCard(backbone="mobilefacenet", embedding_size=D, weights_sha256="a" * 64)


def _race(tmp_path: Path, folder: Path, mode: str, tags: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    go = tmp_path / f"go-{tags[0]}"
    env = {**os.environ, "PYTHONPATH": SRC}
    key = _card().compatibility_key
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(folder), tag, mode, str(go), key], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tag in tags]
    time.sleep(1.0)  # both processes import numpy and load the gallery before the start signal
    go.write_text("go")
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def test_two_updating_processes_both_land(tmp_path):
    folder = tmp_path / "g"
    for round_, tags in enumerate((("a", "b"), ("c", "d"))):  # first into no gallery, then into an existing one
        results = _race(tmp_path, folder, "update", tags)
        assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
        gallery = Gallery.load(folder)
        expected = {f"{t}{i}" for t in "abcd"[: 2 * (round_ + 1)] for i in range(6)}
        assert set(gallery.names) == expected and len(gallery) == 12 * (round_ + 1)
    assert not list(folder.glob(".tmp-*"))


def test_two_plain_savers_second_is_refused_and_first_kept(tmp_path):
    folder = tmp_path / "g"
    seed = Gallery.create(_card())
    seed.add("base", np.ones(D), _card())
    seed.save(folder)
    results = _race(tmp_path, folder, "plain", ("a", "b"))
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 3], [r.stderr for r in results]
    refused = next(r for r in results if r.returncode == 3)
    assert "saved by another writer" in refused.stderr and "nothing was saved" in refused.stderr
    winner = "ab"[[r.returncode for r in results].index(0)]
    assert set(Gallery.load(folder).names) == {"base", *(f"{winner}{i}" for i in range(6))}


def test_saving_over_another_gallery_is_refused(tmp_path):
    first = Gallery.create(_card())
    first.add("x", np.ones(D), _card())
    first.save(tmp_path / "g")
    second = Gallery.create(_card())  # e.g. two enrolments that both found no gallery
    second.add("y", np.ones(D), _card())
    with pytest.raises(GalleryConflictError, match="already holds a gallery"):
        second.save(tmp_path / "g")
    stale = Gallery.load(tmp_path / "g")
    first.add("z", np.ones(D), _card())
    first.save()
    stale.add("w", np.ones(D), _card())
    with pytest.raises(GalleryConflictError, match=r"saved by another writer \(v000002\).*loaded \(v000001\)"):
        stale.save()
    assert Gallery.load(tmp_path / "g").names == ["x", "z"]
    restored = Gallery.load(tmp_path / "g", version="v000001")  # restoring an older version is still a save
    restored.save()
    assert Gallery.load(tmp_path / "g").names == ["x"]


def test_prune_keeps_a_live_writers_temporary_folder(tmp_path):
    gallery = Gallery.create(_card())
    gallery.add("x", np.ones(D), _card())
    gallery.save(tmp_path / "g")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
        live_tmp = tmp_path / "g" / f".tmp-v000009-{sleeper.pid}-1"
        dead_tmp = tmp_path / "g" / f".tmp-v000009-{int(dead.stdout)}-1"
        live_tmp.mkdir()
        dead_tmp.mkdir()
        gallery.save()
        assert live_tmp.is_dir() and not dead_tmp.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
