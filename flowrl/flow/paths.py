"""Probability paths: the linear (rectified-flow) path, TrigFlow, and the maps between them.

Linear path, our convention (t = 0 noise, t = 1 data)::

    x_t = (1 − t)·ε + t·x1,      ε ~ N(0, I),      u_t = dx_t/dt = x1 − ε.

TrigFlow (Lu & Song 2024), with its own angle s ∈ [0, π/2], s = 0 data, s = π/2 noise, and
data standard deviation σ_d::

    x_s = cos s·x1 + sin s·σ_d·ε,      dx_s/ds = −sin s·x1 + cos s·σ_d·ε.

Both are the same family of Gaussian paths up to a rescaling of space and time:
``x_s = c(s)·x_{t(s)}`` with ``c(s) = cos s + σ_d sin s`` and
``t(s) = cos s / (cos s + σ_d sin s)`` (for σ_d = 1: σ = tan s, t = 1/(1 + σ)). The
velocity maps below follow from the chain rule and hold for any velocity field, not only
the conditional one; ``tests/flow/test_paths.py`` checks them against finite differences.
All conversions live in this file and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "PathSample",
    "expand_time",
    "linear_interpolate",
    "linear_path_sample",
    "linear_to_trig_position",
    "linear_to_trig_time",
    "linear_to_trig_velocity",
    "trig_interpolate",
    "trig_scale",
    "trig_to_linear_position",
    "trig_to_linear_time",
    "trig_to_linear_velocity",
    "trig_velocity",
]


def expand_time(t: Tensor, like: Tensor) -> Tensor:
    """View a per-sample time (B,) so that it broadcasts against ``like`` (B, ...).

    Args:
        t: Times, shape (B,) (or a 0-d tensor, which broadcasts as is).
        like: Tensor of shape (B, ...).

    Returns:
        ``t`` reshaped to (B, 1, …, 1) with ``like.dim()`` dimensions.
    """
    if t.dim() == 0:
        return t
    if t.shape[0] != like.shape[0]:
        raise ValueError(f"time has batch {t.shape[0]} but the tensor has batch {like.shape[0]}")
    return t.reshape(t.shape[0], *([1] * (like.dim() - 1)))


@dataclass(frozen=True)
class PathSample:
    """A point on a conditional path and its regression target.

    Attributes:
        t: Times, shape (B,).
        x_t: Positions on the path, shape (B, ...).
        velocity: Conditional velocity dx_t/dt at ``x_t`` (the flow-matching target),
            shape (B, ...).
    """

    t: Tensor
    x_t: Tensor
    velocity: Tensor


def linear_interpolate(noise: Tensor, data: Tensor, t: Tensor) -> Tensor:
    """Position on the linear path, ``x_t = (1 − t)·noise + t·data``.

    Args:
        noise: ε, shape (B, ...).
        data: x1, shape (B, ...).
        t: Times, shape (B,).

    Returns:
        x_t, shape (B, ...).
    """
    tt = expand_time(t, data)
    return (1.0 - tt) * noise + tt * data


def linear_path_sample(noise: Tensor, data: Tensor, t: Tensor) -> PathSample:
    """Sample of the linear conditional path with its target velocity ``data − noise``.

    Args:
        noise: ε, shape (B, ...).
        data: x1, shape (B, ...).
        t: Times, shape (B,).

    Returns:
        The :class:`PathSample` (t, x_t, x1 − ε).
    """
    if noise.shape != data.shape:
        raise ValueError(f"noise {tuple(noise.shape)} and data {tuple(data.shape)} differ")
    return PathSample(t=t, x_t=linear_interpolate(noise, data, t), velocity=data - noise)


# --------------------------------------------------------------------------- TrigFlow


def trig_interpolate(data: Tensor, noise: Tensor, s: Tensor, sigma_d: float = 1.0) -> Tensor:
    """TrigFlow position ``x_s = cos s·data + sin s·σ_d·noise`` (noise is standard normal).

    Args:
        data: x1, shape (B, ...).
        noise: ε ~ N(0, I), shape (B, ...).
        s: Angles in [0, π/2], shape (B,).
        sigma_d: Data standard deviation σ_d.

    Returns:
        x_s, shape (B, ...).
    """
    ss = expand_time(s, data)
    return torch.cos(ss) * data + torch.sin(ss) * sigma_d * noise


def trig_velocity(data: Tensor, noise: Tensor, s: Tensor, sigma_d: float = 1.0) -> Tensor:
    """TrigFlow conditional velocity ``dx_s/ds = −sin s·data + cos s·σ_d·noise``.

    Args:
        data: x1, shape (B, ...).
        noise: ε ~ N(0, I), shape (B, ...).
        s: Angles, shape (B,).
        sigma_d: Data standard deviation σ_d.

    Returns:
        dx_s/ds, shape (B, ...).
    """
    ss = expand_time(s, data)
    return -torch.sin(ss) * data + torch.cos(ss) * sigma_d * noise


def trig_scale(s: Tensor, sigma_d: float = 1.0) -> Tensor:
    """Spatial scale ``c(s) = cos s + σ_d sin s`` with ``x_s = c(s)·x_{t(s)}``; shape of s."""
    return torch.cos(s) + sigma_d * torch.sin(s)


def linear_to_trig_time(t: Tensor, sigma_d: float = 1.0) -> Tensor:
    """Angle s of linear time t: ``tan s = (1 − t) / (σ_d t)``; t = 1 ↦ 0, t = 0 ↦ π/2."""
    return torch.atan2(1.0 - t, sigma_d * t)


def trig_to_linear_time(s: Tensor, sigma_d: float = 1.0) -> Tensor:
    """Linear time of angle s: ``t = cos s / (cos s + σ_d sin s)``."""
    return torch.cos(s) / trig_scale(s, sigma_d)


def linear_to_trig_position(x_t: Tensor, t: Tensor, sigma_d: float = 1.0) -> Tensor:
    """Map a linear-path point x_t (B, ...) at times t (B,) to TrigFlow's x_s (B, ...)."""
    s = linear_to_trig_time(t, sigma_d)
    return expand_time(trig_scale(s, sigma_d), x_t) * x_t


def trig_to_linear_position(x_s: Tensor, s: Tensor, sigma_d: float = 1.0) -> Tensor:
    """Map a TrigFlow point x_s (B, ...) at angles s (B,) to the linear path's x_t (B, ...)."""
    return x_s / expand_time(trig_scale(s, sigma_d), x_s)


def linear_to_trig_velocity(
    x_t: Tensor, velocity: Tensor, t: Tensor, sigma_d: float = 1.0
) -> Tensor:
    """Convert a linear-path velocity dx_t/dt at (t, x_t) into TrigFlow's dx_s/ds.

    The linear velocity determines the implied data and noise estimates
    ``x̂1 = x_t + (1 − t)·u`` and ``ε̂ = x_t − t·u``; TrigFlow's velocity is then
    ``−sin s·x̂1 + cos s·σ_d·ε̂`` at ``x_s = c(s)·x_t``.

    Args:
        x_t: Linear-path position, shape (B, ...).
        velocity: u = dx_t/dt at x_t, shape (B, ...).
        t: Linear times, shape (B,).
        sigma_d: Data standard deviation σ_d.

    Returns:
        dx_s/ds at s = s(t), shape (B, ...).
    """
    tt = expand_time(t, x_t)
    ss = expand_time(linear_to_trig_time(t, sigma_d), x_t)
    data_hat = x_t + (1.0 - tt) * velocity
    noise_hat = x_t - tt * velocity
    return -torch.sin(ss) * data_hat + torch.cos(ss) * sigma_d * noise_hat


def trig_to_linear_velocity(x_s: Tensor, dxds: Tensor, s: Tensor, sigma_d: float = 1.0) -> Tensor:
    """Convert TrigFlow's dx_s/ds at (s, x_s) into the linear-path velocity dx_t/dt.

    Inverts :func:`linear_to_trig_velocity`: ``x̂1 = cos s·x_s − sin s·dx_s/ds`` and
    ``σ_d ε̂ = sin s·x_s + cos s·dx_s/ds``, then ``u = x̂1 − ε̂``.

    Args:
        x_s: TrigFlow position, shape (B, ...).
        dxds: dx_s/ds at x_s, shape (B, ...).
        s: Angles, shape (B,).
        sigma_d: Data standard deviation σ_d.

    Returns:
        u = dx_t/dt at t = t(s), x_t = x_s / c(s), shape (B, ...).
    """
    ss = expand_time(s, x_s)
    cos, sin = torch.cos(ss), torch.sin(ss)
    data_hat = cos * x_s - sin * dxds
    noise_hat = (sin * x_s + cos * dxds) / sigma_d
    return data_hat - noise_hat
