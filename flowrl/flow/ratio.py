"""Policy ratios of flow policies from velocity differences (PolicyFlow, arXiv 2602.01156).

A PolicyFlow action is a = φ₁(z; o) + n with n ~ N(0, σ²I) and φ₁ the flow's map from the
latent z. Conditioned on z the policy is Gaussian, π(a | z, o) = N(a; φ₁(z), σ²), and with
the rollout's noise n̂ = a − φ̂₁(z) the conditional ratio of a new to an old policy is

    N(a; φ₁(z), σ²) / N(a; φ̂₁(z), σ̂²) = N(n̂; Δ, σ²) / N(n̂; 0, σ̂²),   Δ = φ₁(z) − φ̂₁(z),

since shifting both the point and the mean of a Gaussian leaves its density unchanged. The
endpoint change Δ needs no ODE: along the straight path x_t = (1 − t)·z + t·φ̂₁ from the latent
to the old endpoint, the velocity difference δ(t) = v_θ(t, x_t) − v̂(t, x_t) integrates to Δ
to first order in the parameter change (exactly, when δ is constant along the path).

Two estimators, both on that path:

* ``"paper"``: J times t_j ~ U[0, 1]; ρ ≈ (1/J) Σ_j N(n̂; δ(t_j), σ²) / N(n̂; 0, σ̂²), the
  estimator of the PolicyFlow paper (a mean of per-time ratios).
* ``"grid"``: the K times t_k of THE time grid, all of them; ρ ≈ N(n̂; Σ_k Δt_k δ(t_k), σ²) /
  N(n̂; 0, σ̂²). A K-step Euler policy reads its velocity only at the grid times, and
  Σ_k Δt_k δ(t_k, x_k) is its endpoint change to first order when x_k is its own Euler path;
  for K = 1 (x_0 = z) it is exact.

The Brownian regularizer (same paper) is a function of the same path points:
η = (1 − t)·v_θ(t, x_t) − (x_t − t·v̂(t, x_t)), penalized as w_b·‖η‖², beside the Gaussian
noise's entropy bonus (w_g/2)·Σ log(2πe·σ²). At θ = θ̂, η = v̂ − x_t; its minimizer in v_θ is
(x_t − t·v̂)/(1 − t), where x_t − t·v̂ is the flow's own estimate of the latent, so the term
pulls the velocity towards the latent's direction and stretches the map z ↦ a: an entropy
bonus on the flow that needs no density.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from flowrl.flow.integrators import gaussian_log_prob
from flowrl.flow.paths import expand_time, linear_interpolate
from flowrl.flow.times import Steps, num_steps_of, time_grid

__all__ = [
    "RATIO_ESTIMATORS",
    "RatioEstimator",
    "brownian_residual",
    "path_points",
    "ratio_times",
    "velocity_difference_log_ratio",
]

RatioEstimator = Literal["paper", "grid"]
RATIO_ESTIMATORS: tuple[str, ...] = ("paper", "grid")


def ratio_times(
    estimator: RatioEstimator,
    batch: int,
    num_times: int,
    num_steps: Steps,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Times at which the velocity difference is read, shape (B, J).

    Args:
        estimator: ``"paper"`` (J = ``num_times`` draws from U[0, 1] per row) or ``"grid"``
            (J = K: the grid times t_k, the same for every row; nothing is drawn).
        batch: B.
        num_times: J for ``"paper"``.
        num_steps: K for ``"grid"``, or the policy's :class:`~flowrl.flow.times.TimeGrid`.
        device: Device of the result.
        dtype: Floating dtype of the result.
        generator: RNG for ``"paper"``.

    Raises:
        ValueError: For an unknown estimator or a non-positive ``num_times``.
    """
    if estimator == "grid":
        t, _ = time_grid(num_steps, device=device, dtype=dtype)
        return t.expand(batch, num_steps_of(num_steps)).clone()
    if estimator != "paper":
        raise ValueError(f"unknown ratio estimator {estimator!r}; choose one of {RATIO_ESTIMATORS}")
    if isinstance(num_times, bool) or not isinstance(num_times, int) or num_times < 1:
        raise ValueError(f"num_times must be a positive int, got {num_times!r}")
    return torch.rand(batch, num_times, device=device, dtype=dtype, generator=generator)


def path_points(latents: Tensor, endpoints: Tensor, times: Tensor) -> Tensor:
    """Points x_t = (1 − t)·z + t·φ̂₁ of the straight latent-to-endpoint path.

    Args:
        latents: z, shape (B, Da).
        endpoints: φ̂₁(z), shape (B, Da).
        times: t, shape (B, J).

    Returns:
        x_t, shape (B, J, Da).
    """
    J = times.shape[1]
    z = latents.unsqueeze(1).expand(-1, J, -1)
    x1 = endpoints.unsqueeze(1).expand(-1, J, -1)
    return linear_interpolate(z.flatten(0, 1), x1.flatten(0, 1), times.flatten()).unflatten(
        0, times.shape
    )


def velocity_difference_log_ratio(
    noise: Tensor,
    delta: Tensor,
    sigma: Tensor,
    old_sigma: Tensor,
    estimator: RatioEstimator = "paper",
) -> Tensor:
    """Log of PolicyFlow's ratio estimate, per sample.

    Args:
        noise: n̂ = a − φ̂₁(z), the rollout's Gaussian noise, shape (B, Da).
        delta: δ_j = v_θ(t_j, x_j) − v̂(t_j, x_j), shape (B, J, Da).
        sigma: σ of the new policy, shape (B, Da).
        old_sigma: σ̂ of the rollout's policy, shape (B, Da).
        estimator: ``"paper"``: log of (1/J) Σ_j N(n̂; δ_j, σ²)/N(n̂; 0, σ̂²); ``"grid"``:
            ``delta`` holds the J = K grid times' differences and the mean over them, i.e.
            Σ_k Δt_k δ_k on THE uniform grid, is the endpoint change:
            log N(n̂; mean_k δ_k, σ²) − log N(n̂; 0, σ̂²).

    Returns:
        log ρ, shape (B,), float64 (Gaussian log-densities are summed in float64).
    """
    if delta.dim() != 3 or delta.shape[0] != noise.shape[0] or delta.shape[2] != noise.shape[1]:
        raise ValueError(
            f"delta must have shape (B, J, Da) = ({noise.shape[0]}, J, {noise.shape[1]}), "
            f"got {tuple(delta.shape)}"
        )
    old = gaussian_log_prob(noise, torch.zeros_like(noise), old_sigma)
    if estimator == "grid":
        return gaussian_log_prob(noise, delta.mean(dim=1), sigma) - old
    if estimator != "paper":
        raise ValueError(f"unknown ratio estimator {estimator!r}; choose one of {RATIO_ESTIMATORS}")
    B, J, Da = delta.shape
    flat_noise = noise.unsqueeze(1).expand(B, J, Da).flatten(0, 1)
    flat_sigma = sigma.unsqueeze(1).expand(B, J, Da).flatten(0, 1)
    new = gaussian_log_prob(flat_noise, delta.flatten(0, 1), flat_sigma).view(B, J)
    return torch.logsumexp(new - old.unsqueeze(1), dim=1) - math.log(J)


def brownian_residual(t: Tensor, x_t: Tensor, velocity: Tensor, old_velocity: Tensor) -> Tensor:
    """η = (1 − t)·v_θ(t, x_t) − (x_t − t·v̂(t, x_t)), elementwise.

    Args:
        t: Times, shape (B,).
        x_t: Path points, shape (B, Da).
        velocity: v_θ(t, x_t), shape (B, Da).
        old_velocity: v̂(t, x_t), shape (B, Da).

    Returns:
        η, shape (B, Da).
    """
    t = expand_time(t, x_t)
    return (1 - t) * velocity - (x_t - t * old_velocity)
