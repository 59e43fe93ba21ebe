import numpy as np
import pytest
import torch

from marginface.data.synthetic import SyntheticFaces, render_face, synthetic_pairs, synthetic_splits
from marginface.data.transforms import to_tensor
from marginface.evaluation.metrics import kfold_accuracy


def test_deterministic_and_order_independent():
    a = SyntheticFaces(5, 4, seed=3)
    b = SyntheticFaces(5, 4, seed=3)
    forward = [a[i][0] for i in range(len(a))]
    backward = [b[i][0] for i in reversed(range(len(b)))][::-1]
    assert all(torch.equal(x, y) for x, y in zip(forward, backward))
    assert np.array_equal(render_face(3, 2, 1), render_face(3, 2, 1))
    assert not np.array_equal(render_face(3, 2, 1), render_face(4, 2, 1))  # the seed selects the population
    assert not np.array_equal(render_face(3, 2, 1), render_face(3, 2, 2))  # nuisance differs per image


def test_contract_shapes_labels_and_range():
    dataset = SyntheticFaces(3, 2, seed=0)
    assert len(dataset) == 6 and dataset.num_classes == 3
    image, label = dataset[5]
    assert image.shape == (3, 112, 112) and image.dtype == torch.float32 and label == 2
    assert image.min() >= -1.0 and image.max() <= 1.0 and image.std() > 0.2
    assert torch.equal(image, to_tensor(render_face(0, 2, 1)))
    assert SyntheticFaces(2, 1, seed=0, image_size=64)[0][0].shape == (3, 64, 64)
    with pytest.raises(IndexError):
        dataset[6]
    with pytest.raises(ValueError):
        SyntheticFaces(0, 2, seed=0)


def test_pairs_balanced_and_well_formed():
    members, issame = synthetic_pairs(10, 5, 40, seed=1)
    assert members.shape == (80, 2) and issame.shape == (40,) and issame.sum() == 20
    assert np.all(members[:, 0] < 10) and np.all(members[:, 1] < 5)
    first, second = members[0::2], members[1::2]
    assert np.all((first[:, 0] == second[:, 0]) == issame)
    assert np.all((first != second).any(axis=1))  # never an image paired with itself
    with pytest.raises(ValueError, match=">= 2 held-out identities"):
        synthetic_pairs(1, 5, 4, seed=0)


def test_splits_are_identity_disjoint():
    train, images, issame = synthetic_splits(6, 4, images_per_identity=3, num_pairs=8, seed=5)
    assert train.num_classes == 6 and len(train) == 18
    assert images.shape == (16, 3, 112, 112) and issame.shape == (8,) and issame.dtype == bool
    members, expected_issame = synthetic_pairs(4, 3, 8, seed=5)
    assert np.array_equal(issame, expected_issame)
    train_images = torch.stack([train[i][0] for i in range(len(train))])
    for row, (identity, image_index) in enumerate(members):
        # every held-out image is an identity numbered after all training identities...
        assert torch.equal(images[row], to_tensor(render_face(5, 6 + int(identity), int(image_index))))
        # ...and equals no training image
        assert not (train_images == images[row]).flatten(1).all(1).any()


@pytest.mark.slow  # ~2 s idle, up to 7 s on a loaded 2-core machine
def test_raw_pixels_verify_held_out_identities_poorly():
    """Nearest-neighbour on raw pixels must be close to chance: the nuisance dominates pixel distance."""
    _, images, issame = synthetic_splits(1, 60, images_per_identity=8, num_pairs=240, seed=11)
    flat = images.flatten(1).numpy().astype(np.float64)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    scores = np.einsum("nd,nd->n", flat[0::2], flat[1::2])  # cosine similarity of each pair
    accuracy = kfold_accuracy(scores, issame, folds=10).mean
    assert accuracy < 0.70, accuracy
