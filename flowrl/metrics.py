"""Metrics: sliced Wasserstein distance, mode coverage and its entropy, IQM over seeds."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from flowrl.data.toy import assign_modes

__all__ = ["iqm", "iqm_bootstrap_ci", "mode_counts", "normalized_entropy", "sliced_wasserstein"]


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


def normalized_entropy(counts: np.ndarray) -> float:
    """Entropy of a histogram divided by log(number of bins): 1.0 = every bin equally often.

    Args:
        counts: (n,) non-negative counts, n >= 2 (e.g. episodes that reached each goal).

    Returns:
        H(p)/log n with p = counts / sum(counts), in [0, 1]; 0 for an empty histogram.

    Raises:
        ValueError: For fewer than two bins or negative counts.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or len(counts) < 2 or (counts < 0).any():
        raise ValueError(f"need (n,) non-negative counts with n >= 2, got {counts}")
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum() / np.log(len(counts))) + 0.0  # no -0.0 for one bin


def iqm(values: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle half of the values (25 % cut each side).

    With n values, ⌊n/4⌋ are dropped from each end, as ``scipy.stats.trim_mean(x, 0.25)``
    does (5 seeds: the middle 3).
    """
    values = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if len(values) == 0:
        raise ValueError("iqm of no values")
    cut = len(values) // 4
    return float(values[cut : len(values) - cut].mean())


def iqm_bootstrap_ci(
    values: np.ndarray, confidence: float = 0.95, samples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the IQM over runs (resampling runs with replacement).

    Args:
        values: (n,) one value per run (seed).
        confidence: Coverage of the interval.
        samples: Bootstrap resamples.
        seed: Seed of the resampling, so a table regenerates identically.

    Returns:
        (low, high).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    rng = np.random.default_rng(seed)
    draws = rng.choice(values, size=(samples, len(values)), replace=True)
    stats = np.array([iqm(row) for row in draws])
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(low), float(high)
