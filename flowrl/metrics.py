"""Sample-quality metrics for flows: sliced Wasserstein distance and mode coverage."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from flowrl.data.toy import assign_modes

__all__ = ["mode_counts", "sliced_wasserstein"]


def sliced_wasserstein(
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    num_projections: int = 256,
    *,
    generator: torch.Generator | None = None,
) -> float:
    """Sliced 2-Wasserstein distance between two point clouds.

    ``SW₂ = sqrt(E_θ W₂²(θᵀx, θᵀy))`` over random unit directions θ; each 1-D W₂ compares
    the two empirical quantile functions at ``min(N, M)`` evenly spaced levels, so the sets
    may differ in size.

    Args:
        x: Samples, shape (N, D).
        y: Samples, shape (M, D).
        num_projections: Number of random directions.
        generator: RNG for the directions (pass a seeded one for comparable numbers).

    Returns:
        The distance (same units as the data).
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need (N, D) and (M, D) samples, got {tuple(x.shape)}, {tuple(y.shape)}")
    if len(x) == 0 or len(y) == 0:
        raise ValueError("cannot compare an empty sample")
    theta = torch.randn(x.shape[1], num_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    n = min(len(x), len(y))
    levels = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    qx = _quantiles(x @ theta, levels)
    qy = _quantiles(y @ theta, levels)
    return float((qx - qy).square().mean().sqrt())


def _quantiles(projected: Tensor, levels: Tensor) -> Tensor:
    """Empirical quantiles of every column of (N, P) at ``levels`` (L,) → (L, P)."""
    sorted_vals, _ = torch.sort(projected, dim=0)
    n = sorted_vals.shape[0]
    pos = levels * n - 0.5
    lo = pos.floor().clamp(0, n - 1).long()
    hi = (lo + 1).clamp(max=n - 1)
    w = (pos - lo.to(pos.dtype)).clamp(0, 1)[:, None]
    return sorted_vals[lo] * (1 - w) + sorted_vals[hi] * w


def mode_counts(samples: Tensor | np.ndarray, centers: np.ndarray, radius: float) -> np.ndarray:
    """Number of samples within ``radius`` of each centre (nearest centre wins).

    Args:
        samples: Points, shape (N, D).
        centers: Mode centres, shape (M, D).
        radius: Distance within which a sample counts for its nearest centre.

    Returns:
        Counts per mode, shape (M,) int; samples farther than ``radius`` from every
        centre are not counted.
    """
    samples = torch.as_tensor(samples).detach().cpu().numpy()
    modes = assign_modes(samples, centers, radius)
    return np.bincount(modes[modes >= 0], minlength=len(centers))
