"""SphereFace-style toy features: a small CNN with a 2-D or 3-D embedding trained on a few identities.

The identities are synthetic (``marginface.data.synthetic``), rendered once at a small size (24 x 24 by
default): nothing to download, the same pixels on every machine, and enough images per identity (default 60)
for a tiny network to separate the classes in a few hundred steps on a CPU. (Real faces -- e.g. the aligned
CelebA subset -- have ~20-30 images per identity and need a real backbone; the toy's point is the geometry of
the loss, which a rendered population shows as well.) Each requested loss trains the same network from the
same seed on the same batches, so the panels differ by the loss alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from marginface.analysis.curves import LossSpec

#: SphereFace's toy comparison: softmax, then A-Softmax with m = 1..4, lambda = 1000 / (1 + step) (3.3 after the
#: default 300 steps: the margin is nearly pure by the end, soft enough at the start to converge).
TOY_LOSSES = [
    "softmax",
    "sphereface:margin=1,lambda_base=0,lambda_min=0",
    "sphereface:margin=2,lambda_gamma=1,lambda_min=0",
    "sphereface:margin=3,lambda_gamma=1,lambda_min=0",
    "sphereface:margin=4,lambda_gamma=1,lambda_min=0",
]


@dataclass
class ToyResult:
    """Features of the training images after training: ``features`` (N, dim) float32, ``labels`` (N,);
    ``spread_deg`` from :func:`angular_spread`; ``accuracy``: nearest-centre (by angle) on the training images."""

    label: str
    features: np.ndarray
    labels: np.ndarray
    spread_deg: float
    accuracy: float


def render_identities(num_identities: int, images_per_identity: int, image_size: int = 32,
                      seed: int = 0) -> tuple[Tensor, Tensor]:
    """(N, 3, s, s) float32 images in [-1, 1] and (N,) labels of synthetic identities 0..num_identities-1."""
    from marginface.data.synthetic import SyntheticFaces

    faces = SyntheticFaces(num_identities, images_per_identity, seed, image_size=image_size)
    images = torch.stack([faces[i][0] for i in range(len(faces))])
    labels = torch.arange(num_identities).repeat_interleave(images_per_identity)
    return images, labels


class ToyNet(nn.Module):
    """Three conv blocks (16-32-64 channels, BN, PReLU, 2x pooling) then a linear map to ``dim`` features."""

    def __init__(self, dim: int, image_size: int = 32) -> None:
        super().__init__()
        blocks, channels = [], 3
        for width in (16, 32, 64):
            blocks += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.PReLU(width),
                       nn.MaxPool2d(2)]
            channels = width
        self.body = nn.Sequential(*blocks)
        self.fc = nn.Linear(64 * (image_size // 8) ** 2, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x).flatten(1))


def angular_spread(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean angle (degrees) between each feature and the mean direction of its class's unit features."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    angles = []
    for c in np.unique(labels):
        members = unit[labels == c]
        centre = members.mean(axis=0)
        centre /= np.linalg.norm(centre)
        angles.append(np.degrees(np.arccos(np.clip(members @ centre, -1.0, 1.0))))
    return float(np.concatenate(angles).mean())


def train_toy(spec: LossSpec, images: Tensor, labels: Tensor, dim: int = 2, steps: int = 300,
              batch_size: int = 64, lr: float = 0.05, seed: int = 0) -> ToyResult:
    """Train ToyNet + the loss on (images, labels) and return the features of all images (eval mode)."""
    if dim < 2:
        raise ValueError(f"the toy embedding needs dim >= 2, got {dim}")
    num_classes = int(labels.max()) + 1
    torch.manual_seed(seed)
    net = ToyNet(dim, images.shape[-1])
    from marginface import losses

    loss = losses.create(spec.name, embedding_size=dim, num_classes=num_classes, **spec.params)
    if loss.normalizes_features:
        # Unit-scale centres: with D = 2 the default N(0, 0.01^2) rows have norm ~0.01, so the gradient through
        # their normalisation is ~100x larger than the features' and one SGD step throws them around.
        torch.nn.init.normal_(loss.weight, std=1.0)
    optimizer = torch.optim.SGD([*net.parameters(), *loss.parameters()], lr=lr, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(seed)
    net.train(), loss.train()
    for step in range(steps):
        batch = torch.randint(len(labels), (batch_size,), generator=generator)
        for group in optimizer.param_groups:  # cosine decay: the toy settles instead of jittering at the end
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * step / steps))
        value = loss(net(images[batch]), labels[batch])
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    net.eval(), loss.eval()
    with torch.no_grad():
        feats = torch.cat([net(chunk) for chunk in images.split(256)])
        centres = F.normalize(loss.weight.detach().reshape(num_classes, -1, dim)[:, 0], dim=1)
        accuracy = float(((F.normalize(feats, dim=1) @ centres.t()).argmax(1) == labels).float().mean())
    features = feats.numpy()
    return ToyResult(spec.label, features, labels.numpy(), angular_spread(features, labels.numpy()), accuracy)


def toy_features(specs: list[LossSpec], dim: int = 2, num_identities: int = 8, images_per_identity: int = 60,
                 image_size: int = 24, steps: int = 300, seed: int = 0, progress: bool = True) -> list[ToyResult]:
    """Train one toy model per loss spec on the same rendered identities; results in the order of ``specs``."""
    from tqdm.auto import tqdm

    images, labels = render_identities(num_identities, images_per_identity, image_size, seed)
    return [train_toy(spec, images, labels, dim=dim, steps=steps, seed=seed)
            for spec in tqdm(specs, desc=f"toy {dim}-D", disable=not progress)]


def normalized(features: np.ndarray) -> np.ndarray:
    return F.normalize(torch.from_numpy(features), dim=1).numpy()
