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
    """Interquartile mean over runs: the 25 % trimmed mean, as rliable's ``aggregate_iqm``.

    With n values, ``⌊n/4⌋`` whole values are dropped from each end and the rest averaged,
    exactly ``scipy.stats.trim_mean(values, 0.25)`` (Agarwal et al. 2021, "Deep RL at the
    edge of the statistical precipice", which rliable computes with that call). So 8 runs
    average the middle 4, 5 runs the middle 3, 6 runs the middle 4, and 2 or 3 runs nothing
    is dropped (the IQM is the mean). No run is weighted fractionally.

    Args:
        values: One value per run (seed); any shape, flattened.

    Returns:
        The interquartile mean.

    Raises:
        ValueError: For no values.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if len(values) == 0:
        raise ValueError("iqm of no values: pass at least one run's value")
    return float(_sorted_rows_iqm(np.sort(values)[None])[0])


def _sorted_rows_iqm(rows: np.ndarray) -> np.ndarray:
    """IQM of every row of (B, n) values already sorted along the row → (B,)."""
    n = rows.shape[1]
    cut = n // 4  # int(0.25 * n), scipy.stats.trim_mean's cut
    return rows[:, cut : n - cut].mean(axis=1)


def iqm_bootstrap_ci(
    values: np.ndarray, confidence: float = 0.95, samples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the IQM over runs (rliable's method for one task).

    Draws ``samples`` resamples of the n runs with replacement (n runs each), takes the IQM
    (:func:`iqm`) of each and returns the ``(1 - confidence)/2`` and ``(1 + confidence)/2``
    percentiles of those IQMs (``np.percentile``, linear interpolation). rliable's stratified
    bootstrap resamples runs within each task; with one task that is this plain resampling.
    One run gives ``(value, value)``: there is no spread to resample.

    Args:
        values: One value per run (seed); any shape, flattened.
        confidence: Coverage of the interval, in (0, 1).
        samples: Bootstrap resamples (2000 takes a few milliseconds for a handful of runs).
        seed: Seed of the resampling, so a table regenerates identically.

    Returns:
        (low, high).

    Raises:
        ValueError: For no values, a confidence outside (0, 1) or fewer than one resample.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if len(values) == 0:
        raise ValueError("iqm_bootstrap_ci of no values: pass at least one run's value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1) (e.g. 0.95), got {confidence}")
    if samples < 1:
        raise ValueError(f"samples must be at least 1 (e.g. 2000), got {samples}")
    rng = np.random.default_rng(seed)
    draws = np.sort(rng.choice(values, size=(samples, len(values)), replace=True), axis=1)
    stats = _sorted_rows_iqm(draws)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(low), float(high)
