"""Data for generators that needs no download: digits, 2-D mixtures, procedural videos.

Every set is returned as float32 tensors scaled so that a flow starting from N(0, I) meets
data of comparable spread, plus integer class labels:

* :func:`digits`: scikit-learn's bundled 8×8 handwritten digits (1797 images, 10 classes),
  optionally upsampled to 16×16, pixels in [−1, 1], shape (N, 1, H, W).
* :func:`mixture`: a 2-D Gaussian mixture (8 or 4 modes) at a chosen radius, shape (N, 2),
  with the mode index as the label.
* :func:`moving_squares`: procedural videos of a bright square moving in one of four
  directions (the class), shape (N, 1, T, H, W), pixels in [−1, 1].
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from flowrl.data.toy import mixture_centers
from flowrl.optional import require

__all__ = ["DIRECTIONS", "digits", "mixture", "moving_squares"]

DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0))
"""(dy, dx) per step of the four motion classes of :func:`moving_squares`: right, left, down, up."""


def digits(size: int = 8) -> tuple[Tensor, Tensor]:
    """scikit-learn's digits as images in [−1, 1].

    Args:
        size: 8 (native) or 16 (bilinear upsampling of the 8×8 images).

    Returns:
        ``(images (1797, 1, size, size) float32, labels (1797,) int64)``.
    """
    if size not in (8, 16):
        raise ValueError(f"digits come in size 8 or 16, got {size}")
    datasets = require("sklearn.datasets", "the digits dataset")
    bunch = datasets.load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0  # [0, 1]
    if size == 16:
        images = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    return images.clamp(0, 1) * 2 - 1, torch.as_tensor(bunch.target, dtype=torch.int64)


def mixture(
    n: int, kind: str = "8gaussians", radius: float = 2.0, std: float = 0.1, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Samples of a 2-D Gaussian mixture with modes evenly on a circle.

    Args:
        n: Number of samples.
        kind: ``"8gaussians"`` or ``"4gaussians"`` (mode layout of :mod:`flowrl.data.toy`).
        radius: Distance of the modes from the origin.
        std: Standard deviation of each component.
        seed: RNG seed.

    Returns:
        ``(points (n, 2) float32, mode index (n,) int64)``.
    """
    if n < 1 or radius <= 0 or std < 0:
        raise ValueError(f"need n >= 1, radius > 0, std >= 0; got {n}, {radius}, {std}")
    centers = mixture_centers(kind)
    centers = centers / np.linalg.norm(centers, axis=1, keepdims=True) * radius
    rng = np.random.default_rng(seed)
    labels = rng.integers(len(centers), size=n)
    points = centers[labels] + std * rng.standard_normal((n, 2))
    return torch.as_tensor(points, dtype=torch.float32), torch.as_tensor(labels)


def mixture_modes(kind: str = "8gaussians", radius: float = 2.0) -> np.ndarray:
    """The mode centres used by :func:`mixture`, shape (M, 2)."""
    centers = mixture_centers(kind)
    return centers / np.linalg.norm(centers, axis=1, keepdims=True) * radius


def moving_squares(
    n: int, frames: int = 8, size: int = 16, square: int = 4, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Videos of a square moving one pixel per frame in one of four directions.

    The square starts at a random position from which its first move stays inside and
    bounces off the borders later (every frame shows it whole); the label is its initial
    direction (:data:`DIRECTIONS`).

    Args:
        n: Number of videos.
        frames: T, frames per video.
        size: H = W.
        square: Side of the square in pixels.
        seed: RNG seed.

    Returns:
        ``(videos (n, 1, T, size, size) float32 in [−1, 1], labels (n,) int64)``.
    """
    if n < 1 or frames < 1 or not 0 < square < size:
        raise ValueError(f"need n, frames >= 1 and 0 < square < size; got {n}, {frames}, {square}")
    rng = np.random.default_rng(seed)
    videos = np.full((n, 1, frames, size, size), -1.0, dtype=np.float32)
    labels = rng.integers(len(DIRECTIONS), size=n)
    span = size - square
    for i in range(n):
        dy, dx = DIRECTIONS[labels[i]]
        # Start where the first move stays inside, so it always shows the labelled direction.
        y = rng.integers(max(0, -dy), span + 1 - max(0, dy))
        x = rng.integers(max(0, -dx), span + 1 - max(0, dx))
        for frame in range(frames):
            videos[i, 0, frame, y : y + square, x : x + square] = 1.0
            if not 0 <= y + dy <= span:
                dy = -dy
            if not 0 <= x + dx <= span:
                dx = -dx
            y, x = y + dy, x + dx
    return torch.as_tensor(videos), torch.as_tensor(labels)
