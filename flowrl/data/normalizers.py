"""Per-feature affine normalisation of observations and actions.

A :class:`Normalizer` is an ``nn.Module`` whose statistics are persistent buffers, so it is
saved and moved with the policy that owns it and a checkpoint alone is enough to reproduce
the exact input/output scaling used in training.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn


def _as_vector(name: str, value: np.ndarray | torch.Tensor | float) -> torch.Tensor:
    """Converts a statistic to a detached float32 CPU tensor of shape (D,)."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to(device="cpu", dtype=torch.float32).clone()
    else:
        tensor = torch.as_tensor(np.asarray(value, dtype=np.float32).copy())
    if tensor.ndim != 1 or tensor.shape[0] == 0:
        raise ValueError(f"{name} must have shape (D,) with D >= 1, got {tuple(tensor.shape)}")
    return tensor


def _as_rows(data: np.ndarray | torch.Tensor) -> np.ndarray:
    """Converts data of shape (..., D) to a float64 (rows, D) array for computing statistics."""
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    # float64 so means and variances of large float32 datasets do not lose precision.
    array = np.asarray(data, dtype=np.float64)
    if array.ndim == 0:
        raise ValueError("data must have shape (..., D), got a scalar")
    array = array.reshape(-1, array.shape[-1])
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"data must have at least one row and one feature, got {array.shape}")
    if not np.isfinite(array).all():
        bad = np.flatnonzero(~np.isfinite(array).all(axis=0)).tolist()
        raise ValueError(f"data has non-finite values in feature dims {bad}")
    return array


class Normalizer(nn.Module):
    """Affine map x -> (x - shift) / scale per feature; buffers so it ships inside checkpoints.

    Args:
        shift: (D,) value subtracted from each feature.
        scale: (D,) positive divisor of each feature.
        low: (D,) raw-unit lower bounds that :meth:`unnormalize` clamps to when asked
            (−inf if None). Kept exactly as given, because ``shift − scale`` rounded to
            float32 can fall one ulp outside the box it came from.
        high: (D,) raw-unit upper bounds (+inf if None).

    Raises:
        ValueError: Shapes differ, a statistic is non-finite, or a scale is not positive.
    """

    shift: torch.Tensor
    scale: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor

    def __init__(
        self,
        shift: torch.Tensor | np.ndarray,
        scale: torch.Tensor | np.ndarray,
        low: torch.Tensor | np.ndarray | None = None,
        high: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        super().__init__()
        shift_t = _as_vector("shift", shift)
        scale_t = _as_vector("scale", scale)
        if shift_t.shape != scale_t.shape:
            raise ValueError(
                f"shift and scale must have the same shape, got {tuple(shift_t.shape)} and "
                f"{tuple(scale_t.shape)}"
            )
        for name, tensor in (("shift", shift_t), ("scale", scale_t)):
            bad = torch.nonzero(~torch.isfinite(tensor)).flatten().tolist()
            if bad:
                raise ValueError(f"{name} is not finite in dims {bad}")
        bad = torch.nonzero(scale_t <= 0).flatten().tolist()
        if bad:
            raise ValueError(f"scale must be > 0 in every dim, got <= 0 in dims {bad}")
        low_t = _as_vector("low", low) if low is not None else torch.full_like(shift_t, -np.inf)
        high_t = _as_vector("high", high) if high is not None else torch.full_like(shift_t, np.inf)
        if low_t.shape != shift_t.shape or high_t.shape != shift_t.shape:
            raise ValueError(f"low and high must have shape {tuple(shift_t.shape)}")
        self.register_buffer("shift", shift_t)
        self.register_buffer("scale", scale_t)
        self.register_buffer("low", low_t)
        self.register_buffer("high", high_t)

    @classmethod
    def gaussian(cls, data: np.ndarray | torch.Tensor, eps: float = 1e-6) -> Normalizer:
        """Standardises each feature to zero mean and unit variance over the data.

        Args:
            data: (N, D) samples (leading dims beyond one are flattened).
            eps: Features with a standard deviation below this count as constant and get scale 1,
                so they are centred rather than blown up by a tiny divisor.

        Returns:
            The fitted normalizer.
        """
        array = _as_rows(data)
        std = array.std(axis=0)
        return cls(
            torch.from_numpy(array.mean(axis=0)), torch.from_numpy(np.where(std < eps, 1.0, std))
        )

    @classmethod
    def box(
        cls, low: np.ndarray | torch.Tensor | float, high: np.ndarray | torch.Tensor | float
    ) -> Normalizer:
        """Maps the box [low, high] to [-1, 1] per feature (e.g. an env's action bounds).

        Args:
            low: (D,) lower bounds.
            high: (D,) upper bounds, each greater than ``low``.

        Returns:
            The normalizer.

        Raises:
            ValueError: A bound is non-finite or ``high <= low`` in some dim.
        """
        low_a = np.atleast_1d(np.asarray(_np(low), dtype=np.float64))
        high_a = np.atleast_1d(np.asarray(_np(high), dtype=np.float64))
        if low_a.shape != high_a.shape or low_a.ndim != 1:
            raise ValueError(
                f"low and high must both have shape (D,), got {low_a.shape} and {high_a.shape}"
            )
        bad = np.flatnonzero(~(np.isfinite(low_a) & np.isfinite(high_a))).tolist()
        if bad:
            raise ValueError(
                f"box bounds are not finite in dims {bad}: use Normalizer.gaussian or "
                "Normalizer.from_data_range for unbounded features"
            )
        bad = np.flatnonzero(high_a <= low_a).tolist()
        if bad:
            raise ValueError(f"box needs high > low in every dim, but high <= low in dims {bad}")
        return cls(
            torch.from_numpy((high_a + low_a) / 2),
            torch.from_numpy((high_a - low_a) / 2),
            low=torch.from_numpy(low_a),
            high=torch.from_numpy(high_a),
        )

    @classmethod
    def from_data_range(
        cls, data: np.ndarray | torch.Tensor, margin: float = 0.0, eps: float = 1e-6
    ) -> Normalizer:
        """Maps the per-feature data range, widened by a margin, to [-1, 1].

        Args:
            data: (N, D) samples (leading dims beyond one are flattened).
            margin: Fraction of each feature's range added on both sides, so unseen values
                slightly outside the data stay within [-1, 1].
            eps: Features with a range below this count as constant and get scale 1 (centred
                on their value).

        Returns:
            The fitted normalizer.
        """
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        array = _as_rows(data)
        low, high = array.min(axis=0), array.max(axis=0)
        span = high - low
        half_width = np.where(span < eps, 1.0, span * (0.5 + margin))
        return cls(torch.from_numpy((high + low) / 2), torch.from_numpy(half_width))

    @classmethod
    def identity(cls, dim: int) -> Normalizer:
        """Returns a normalizer that leaves D = ``dim`` features unchanged."""
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        return cls(torch.zeros(dim), torch.ones(dim))

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], prefix: str = "") -> Normalizer:
        """Rebuilds a normalizer from its ``state_dict``, without knowing D in advance.

        Args:
            state: A mapping with ``{prefix}shift`` and ``{prefix}scale`` entries, e.g. the
                normalizer's own state dict or a whole checkpoint.
            prefix: Key prefix inside ``state``, e.g. ``"obs_normalizer."`` for a submodule.

        Returns:
            The normalizer.

        Raises:
            KeyError: An entry is missing.
        """
        missing = [f"{prefix}{key}" for key in ("shift", "scale") if f"{prefix}{key}" not in state]
        if missing:
            raise KeyError(f"state is missing {missing}; it has keys {sorted(state)}")
        # low/high are optional so that states saved before they existed still load.
        return cls(
            state[f"{prefix}shift"],
            state[f"{prefix}scale"],
            low=state.get(f"{prefix}low"),
            high=state.get(f"{prefix}high"),
        )

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.shift.shape[0])

    def extra_repr(self) -> str:
        """Shows D in ``repr``."""
        return f"dim={self.dim}"

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim == 0 or x.shape[-1] != self.dim:
            shape = tuple(x.shape)
            raise ValueError(
                f"normalizer has D={self.dim} features but the input's last dim is "
                f"{shape[-1] if shape else 'missing'} (shape {shape})"
            )

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Maps raw values to normalised ones.

        Args:
            x: (..., D) raw values.

        Returns:
            (..., D) normalised values.
        """
        self._check(x)
        return (x - self.shift) / self.scale

    def unnormalize(self, x: torch.Tensor, clip: bool = False) -> torch.Tensor:
        """Maps normalised values back to raw ones (inverse of :meth:`normalize`).

        Args:
            x: (..., D) normalised values.
            clip: Clamp to [−1, 1] first and to the raw bounds ``[low, high]`` after, so the
                result lies in the original box exactly (e.g. passes ``Box.contains``).

        Returns:
            (..., D) raw values.
        """
        self._check(x)
        if not clip:
            return x * self.scale + self.shift
        raw = x.clamp(-1.0, 1.0) * self.scale + self.shift
        return torch.minimum(torch.maximum(raw, self.low), self.high)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`normalize`."""
        return self.normalize(x)


def _np(value: np.ndarray | torch.Tensor | float) -> np.ndarray | float:
    """Converts a tensor to numpy and passes anything else through."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value
