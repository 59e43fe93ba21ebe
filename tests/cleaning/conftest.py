import numpy as np
import pytest
from PIL import Image

from marginface.cleaning.embedders import LabelledEmbeddings, from_names, save_npz


def make_set(root, centres: dict[str, np.ndarray], n: int = 8, spread: float = 0.15, seed: int = 0,
             swap: tuple[str, str] | None = None) -> LabelledEmbeddings:
    """Images (112x112 PNGs) under root/<identity>/ and their synthetic embeddings around ``centres``.

    ``swap=(a, b)``: the last image of ``a`` gets an embedding of ``b`` (a planted label error).
    """
    rng = np.random.default_rng(seed)
    names, rows = [], []
    for k, (identity, centre) in enumerate(sorted(centres.items())):
        (root / identity).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            name = f"{identity}/{i:02d}.png"
            Image.fromarray(np.full((112, 112, 3), (40 * k) % 255, np.uint8)).save(root / name)
            vec = centre if not (swap and identity == swap[0] and i == n - 1) else centres[swap[1]]
            names.append(name)
            rows.append(vec + spread * rng.normal(size=vec.shape))
    data = from_names(names, np.stack(rows))
    return LabelledEmbeddings(data.names, data.labels, data.classes, data.embeddings, str(root), None)


@pytest.fixture
def planted(tmp_path):
    """Train set a..f (f duplicates e, one a image is really c) and test set x (= a), y (new); saved .npz."""
    rng = np.random.default_rng(42)
    c = {k: rng.normal(size=32) for k in "abcdeyz"}
    train_centres = {k: c[k] for k in "abcde"} | {"f": c["e"]}
    train = make_set(tmp_path / "train", train_centres, swap=("a", "c"))
    test = make_set(tmp_path / "test", {"x": c["a"], "y": c["y"]}, n=2, seed=1)
    return train, save_npz(tmp_path / "train.npz", train), test, save_npz(tmp_path / "test.npz", test)
