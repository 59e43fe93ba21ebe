import numpy as np
import pytest
import torch

from marginface.data.transforms import Compose, RandomHorizontalFlip, hflip, to_tensor, to_uint8, train_transform
from tests.data.helpers import reference_tensor


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)


def test_to_tensor_matches_float64_reference(rgb):
    out = to_tensor(rgb)
    assert out.dtype == torch.float32 and out.shape == (3, 112, 112) and out.is_contiguous()
    np.testing.assert_allclose(out.numpy(), reference_tensor(rgb), rtol=0, atol=1e-6)
    chw = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    np.testing.assert_allclose(to_tensor(chw).numpy(), reference_tensor(rgb), rtol=0, atol=1e-6)


def test_to_tensor_range_endpoints_and_idempotence():
    extremes = np.zeros((2, 2, 3), dtype=np.uint8)
    extremes[0, 0] = 255
    out = to_tensor(extremes)
    assert out[:, 0, 0].tolist() == [1.0, 1.0, 1.0] and out[:, 1, 1].tolist() == [-1.0, -1.0, -1.0]
    assert torch.equal(to_tensor(out), out)


def test_to_uint8_inverts_to_tensor(rgb):
    assert np.array_equal(to_uint8(to_tensor(rgb)), rgb)


def test_to_tensor_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(TypeError):
        to_tensor([[1, 2]])


def test_hflip_numpy_and_tensor_match_loop_reference(rgb):
    expected = np.empty_like(rgb)
    for x in range(rgb.shape[1]):
        expected[:, x] = rgb[:, rgb.shape[1] - 1 - x]
    assert np.array_equal(hflip(rgb), expected)
    assert torch.equal(hflip(to_tensor(rgb)), to_tensor(expected))
    batch = to_tensor(rgb)[None].repeat(2, 1, 1, 1).requires_grad_()
    assert torch.equal(hflip(batch).detach()[1], to_tensor(expected))


def test_random_flip_probability():
    image = to_tensor(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    flipped = hflip(image)
    assert torch.equal(RandomHorizontalFlip(p=0.0)(image), image)
    assert torch.equal(RandomHorizontalFlip(p=1.0)(image), flipped)
    flip = RandomHorizontalFlip(p=0.5, generator=torch.Generator().manual_seed(0))
    rate = np.mean([torch.equal(flip(image), flipped) for _ in range(2000)])
    assert 0.45 < rate < 0.55  # binomial std 0.011: a 4.5-sigma band
    with pytest.raises(ValueError, match="probability"):
        RandomHorizontalFlip(p=1.5)


def test_compose_and_train_transform(rgb):
    pipeline = Compose([to_tensor, RandomHorizontalFlip(p=1.0)])
    assert torch.equal(pipeline(rgb), to_tensor(hflip(rgb)))
    assert train_transform().p == 0.5
