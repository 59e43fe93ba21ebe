"""Several writers of one gallery folder, as real processes: no identity is ever lost silently."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from marginface.errors import UserError
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


def test_non_utf8_identity_folder_is_named_or_skipped(tmp_path):
    """A folder name with undecodable bytes cannot be stored as an identity name: say which, don't crash later."""
    from types import SimpleNamespace

    card = _card()

    class Recognizer:  # embeds without a model: one unit vector per image
        def __init__(self):
            self.card = card

        def embed_with_info(self, paths):
            paths = paths if isinstance(paths, list) else [paths]
            return np.eye(D, dtype=np.float32)[: len(paths)], [SimpleNamespace(several=False)] * len(paths)

    root = tmp_path / "people"
    (root / "ann").mkdir(parents=True)
    (root / "ann" / "0.png").write_bytes(b"ann")
    bad = os.path.join(os.fsencode(root), b"caf\xe9")
    os.mkdir(bad)
    with open(os.path.join(bad, b"0.png"), "wb") as handle:
        handle.write(b"cafe")
    gallery = Gallery.create(card)
    with pytest.raises(UserError, match=r"folder .*people/caf\\xe9 is not a valid UTF-8 name.*`skip_bad=True`"):
        gallery.enroll_folder(Recognizer(), root)
    report = gallery.enroll_folder(Recognizer(), root, skip_bad=True)
    assert gallery.names == ["ann"] and report["skipped"][0]["path"].endswith("people/caf\\xe9/0.png")
    gallery.save(tmp_path / "g")  # nothing undecodable reaches SQLite


@pytest.mark.slow
def test_two_enroll_commands_at_once_keep_every_identity(tmp_path):
    """The audit's case: two ``marginface enroll`` processes into one gallery (both exited 0, one run's identities
    were gone). Now the second saves on top of the first."""
    from PIL import Image

    from tests.inference.helpers import save_tiny

    model = save_tiny(tmp_path / "m.safetensors", flip=False)
    rng = np.random.default_rng(0)
    for run in ("a", "b"):
        for ident in range(3):
            folder = tmp_path / run / f"{run}{ident}"
            folder.mkdir(parents=True)
            for j in range(2):
                Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(folder / f"{j}.png")
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "marginface.cli", "enroll", str(tmp_path / run), "--gallery",
                               str(tmp_path / "g"), "--model", str(model)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for run in ("a", "b")]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-1500:] for _, err in outputs]
    gallery = Gallery.load(tmp_path / "g")
    assert sorted(gallery.names) == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert all(gallery.images(name) == 2 for name in gallery.names)


def test_a_first_version_without_current_is_a_gallery_being_born(tmp_path):
    """Between a first save's rename of v000001 and its write of CURRENT, another writer must not call the folder
    foreign (what made the two-enroll race fail once): it waits for the lock and then finds CURRENT."""
    (tmp_path / "g" / "v000001").mkdir(parents=True)  # also the state a crash at that moment leaves
    with Gallery.update(tmp_path / "g", _card()) as gallery:
        gallery.add("x", np.ones(D), _card())
    assert Gallery.load(tmp_path / "g").names == ["x"]
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not a gallery folder"):
        Gallery.create(_card()).save(tmp_path / "h")
    assert not (tmp_path / "h" / ".lock").exists()  # refused before the lock file is created
