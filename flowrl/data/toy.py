"""Two-dimensional Gaussian mixtures: multimodal toy data for demos and tests, no downloads.

A flow policy should reproduce every mode of such a mixture, where a Gaussian policy would
average them; :func:`assign_modes` measures that.
"""

from __future__ import annotations

import numpy as np

from flowrl.data.datasets import OfflineDataset

MIXTURE_STD = 0.08
"""Default standard deviation of each mixture component (well separated at radius 0.6)."""

_RADIUS = 0.6
_EPISODE_LENGTH = 100

_KINDS = ("4gaussians", "8gaussians")


def mixture_centers(kind: str) -> np.ndarray:
    """Returns the component centres of a named mixture.

    Args:
        kind: ``"4gaussians"``: (±0.6, 0) and (0, ±0.6); ``"8gaussians"``: 8 points evenly on
            the circle of radius 0.6, starting at angle 0.

    Returns:
        (K, 2) float32 centres.

    Raises:
        ValueError: Unknown ``kind``.
    """
    if kind == "4gaussians":
        centers = [(_RADIUS, 0.0), (0.0, _RADIUS), (-_RADIUS, 0.0), (0.0, -_RADIUS)]
        return np.asarray(centers, dtype=np.float32)
    if kind == "8gaussians":
        angles = np.arange(8) * (2 * np.pi / 8)
        return (_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)).astype(np.float32)
    raise ValueError(f"unknown mixture kind {kind!r}; known kinds: {list(_KINDS)}")


def sample_mixture(
    kind: str,
    n: int,
    *,
    std: float = MIXTURE_STD,
    seed: int | np.random.Generator | None = None,
) -> np.ndarray:
    """Draws samples from a mixture whose components are chosen uniformly.

    Args:
        kind: Mixture name, see :func:`mixture_centers`.
        n: Number of samples.
        std: Standard deviation of each isotropic component.
        seed: Seed or generator for reproducible draws; fresh entropy when None.

    Returns:
        (n, 2) float32 samples.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std}")
    centers = mixture_centers(kind)
    rng = np.random.default_rng(seed)
    component = rng.integers(len(centers), size=n)
    samples = centers[component] + std * rng.standard_normal((n, 2))
    return samples.astype(np.float32)


def mixture_dataset(
    kind: str,
    n: int,
    *,
    std: float = MIXTURE_STD,
    seed: int | np.random.Generator | None = None,
) -> OfflineDataset:
    """Builds an "unconditional policy" dataset whose actions are mixture samples.

    The observation is one constant zero feature, so a policy fitted to it learns the mixture
    itself. The remaining fields make it a valid episodic dataset (episodes of 100 steps, the
    last one possibly shorter): zero rewards, zero next observations, no terminals, and
    timeouts at every episode end.

    Args:
        kind: Mixture name, see :func:`mixture_centers`.
        n: Number of rows N (>= 1).
        std: Standard deviation of each component.
        seed: Seed or generator for reproducible draws.

    Returns:
        The dataset, with observations (N, 1) and actions (N, 2).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    timeouts = np.zeros(n, dtype=bool)
    timeouts[_EPISODE_LENGTH - 1 :: _EPISODE_LENGTH] = True
    timeouts[-1] = True
    return OfflineDataset(
        observations=np.zeros((n, 1), dtype=np.float32),
        actions=sample_mixture(kind, n, std=std, seed=seed),
        rewards=np.zeros(n, dtype=np.float32),
        next_observations=np.zeros((n, 1), dtype=np.float32),
        terminals=np.zeros(n, dtype=bool),
        timeouts=timeouts,
    )


def assign_modes(samples: np.ndarray, centers: np.ndarray, radius: float) -> np.ndarray:
    """Assigns each sample to its nearest centre, or to none when it is far from all.

    Args:
        samples: (n, 2) points (any feature count D works, matching ``centers``).
        centers: (K, 2) centres.
        radius: Samples farther than this from every centre get -1.

    Returns:
        (n,) int64 centre indices in [0, K), or -1.
    """
    samples = np.asarray(samples, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    if samples.ndim != 2 or centers.ndim != 2 or samples.shape[1] != centers.shape[1]:
        raise ValueError(
            f"samples (n, D) and centers (K, D) must share D, got {samples.shape} and "
            f"{centers.shape}"
        )
    if len(centers) == 0:
        raise ValueError("centers must hold at least one centre")
    dist = np.linalg.norm(samples[:, None, :] - centers[None, :, :], axis=-1)
    nearest = dist.argmin(axis=1)
    return np.where(dist.min(axis=1) <= radius, nearest, -1).astype(np.int64)
