"""Sample-quality metrics for generators that need no pretrained download.

* :class:`DigitClassifier` / :func:`train_digit_classifier`: a small MLP the project trains
  on scikit-learn's digits in seconds; its penultimate features define the Fréchet distance
  (:func:`frechet_distance`, an FID analogue at 8×8) and its predictions the class accuracy
  of class-conditional samples.
* :func:`motion_directions`: the direction class of each procedural video
  (:func:`flowrl.generative.data.moving_squares`) from the displacement of the bright
  square's centroid between its first two frames.
* 2-D data use :func:`flowrl.metrics.sliced_wasserstein` and :func:`flowrl.metrics.mode_counts`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowrl.generative.data import DIRECTIONS, digits

__all__ = [
    "DigitClassifier",
    "frechet_distance",
    "motion_directions",
    "train_digit_classifier",
]


class DigitClassifier(nn.Module):
    """MLP over (B, 1, H, W) digit images in [−1, 1]: features (B, 128) and logits (B, 10).

    An MLP rather than a CNN: at 8×8 it reaches the same ~98 % held-out accuracy and trains
    in seconds on one CPU core.
    """

    def __init__(self, size: int = 8, feature_dim: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(size * size, 256),
            nn.ReLU(),
            nn.Linear(256, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, 10)

    def features(self, images: Tensor) -> Tensor:
        """Penultimate activations, shape (B, feature_dim)."""
        return self.body(images)

    def forward(self, images: Tensor) -> Tensor:
        """Class logits, shape (B, 10)."""
        return self.head(self.features(images))


def train_digit_classifier(
    size: int = 8, epochs: int = 40, seed: int = 0, holdout: float = 0.2
) -> tuple[DigitClassifier, float]:
    """Train :class:`DigitClassifier` on the digits (with ±1-pixel shift augmentation).

    Args:
        size: Image size (8 or 16), as in :func:`flowrl.generative.data.digits`.
        epochs: Passes over the training split.
        seed: Seed of the split, the initialization and the batches.
        holdout: Fraction of images held out to measure accuracy.

    Returns:
        ``(classifier in eval mode, held-out accuracy)``.
    """
    images, labels = digits(size)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=gen)
    n_test = int(len(images) * holdout)
    test, train = order[:n_test], order[n_test:]
    torch.manual_seed(seed)
    model = DigitClassifier(size)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(train), generator=gen).split(64):
            idx = train[batch]
            x = images[idx]
            shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
            x = torch.roll(x, shifts=shift, dims=(2, 3))  # small translations generalize better
            loss = nn.functional.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval().requires_grad_(False)
    with torch.no_grad():
        accuracy = (
            float((model(images[test]).argmax(1) == labels[test]).float().mean())
            if n_test
            else float("nan")
        )
    return model, accuracy


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Na, F), (Nb, F).

    ‖μa − μb‖² + Tr(Σa + Σb − 2(Σa^½ Σb Σa^½)^½), in float64 with symmetric eigen-solvers
    (no scipy). Biased upwards for small sample counts: compare at equal N.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(
            f"need two (N >= 2, F) feature sets, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)

    def sqrtm_psd(m: Tensor) -> Tensor:
        values, vectors = torch.linalg.eigh((m + m.T) / 2)
        return (vectors * values.clamp_min(0).sqrt()) @ vectors.T

    root_a = sqrtm_psd(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * cross)


def motion_directions(videos: Tensor) -> Tensor:
    """Direction class (index into :data:`DIRECTIONS`) of each video's first move.

    The centroid of pixels brighter than 0 in frames 0 and 1 gives (dy, dx); the class is
    the direction with the largest dot product. Videos whose first frames show nothing get
    class −1.

    Args:
        videos: (N, 1, T ≥ 2, H, W) in [−1, 1].

    Returns:
        (N,) int64.
    """
    if videos.dim() != 5 or videos.shape[2] < 2:
        raise ValueError(f"videos must be (N, C, T >= 2, H, W), got {tuple(videos.shape)}")
    h, w = videos.shape[-2:]
    ys = torch.arange(h, dtype=torch.float32)[:, None]
    xs = torch.arange(w, dtype=torch.float32)[None, :]
    centroids, visible = [], []
    for frame in (0, 1):
        mass = (videos[:, 0, frame].float() > 0).float()
        total = mass.sum(dim=(1, 2))
        visible.append(total > 0)
        total = total.clamp_min(1)
        centroids.append(
            torch.stack([(mass * ys).sum((1, 2)) / total, (mass * xs).sum((1, 2)) / total], 1)
        )
    move = centroids[1] - centroids[0]
    directions = torch.tensor(DIRECTIONS, dtype=torch.float32)
    classes = (move @ directions.T).argmax(dim=1)
    return torch.where(visible[0] & visible[1], classes, -1)
