"""Diffusion (DDPM/DDIM) maths in flowrl's time: the cosine schedule and the denoising step.

Convention (DESIGN.md §3): t ∈ [0, 1], **t = 0 is noise and t = 1 is data**. A diffusion
state at time t is ``x_t = √ᾱ(t)·x1 + √(1 − ᾱ(t))·ε`` with ε ~ N(0, I), so ᾱ rises from
≈ 0 at t = 0 to 1 at t = 1 (the reverse of DDPM's index, where step T is noise).

A K-step denoising chain walks THE grid of :func:`flowrl.flow.times.time_grid`: step k goes
from t_k to t_k + Δt_k, with ᾱ at both ends from :func:`ddpm_schedule`. Each step is the
Gaussian of DDIM (Song et al. 2021) with parameter η; η = 1 is DDPM's ancestral step
(the posterior q(x_u | x_s, x̂1), :func:`ddpm_posterior`), η = 0 the deterministic DDIM step.

Notation: s = t_k (the noisier end), u = t_k + Δt_k, ᾱ_s < ᾱ_u; x̂1 is the data prediction
(DDPM's "x0"; flowrl keeps x0/a⁰ for the noise end of a chain).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from flowrl.flow.paths import expand_time
from flowrl.flow.times import Steps, num_steps_of, time_grid

__all__ = [
    "COSINE_OFFSET",
    "MAX_BETA",
    "EpsilonFn",
    "cosine_alpha_bar",
    "ddpm_posterior",
    "ddpm_schedule",
    "denoising_step",
    "diffusion_sample",
    "epsilon_from_velocity",
    "epsilon_loss",
]

COSINE_OFFSET = 0.008
"""s of the cosine schedule (Nichol & Dhariwal 2021; DPPO's ``cosine_beta_schedule``)."""

MAX_BETA = 0.999
"""Largest per-step β = 1 − ᾱ_s/ᾱ_u (DDPM's clip; it only bites on the step from t = 0)."""

EpsilonFn = Callable[[Tensor, Tensor], Tensor]
"""``eps(t (B,), x (B, ...)) -> ε̂ (B, ...)``: the noise a state x_t holds."""


def cosine_alpha_bar(t: Tensor, offset: float = COSINE_OFFSET) -> Tensor:
    """ᾱ(t) of the cosine schedule at flowrl times (t = 0 noise, t = 1 data).

    ``ᾱ(t) = f(1 − t)/f(0)`` with ``f(τ) = cos²((τ + s)/(1 + s)·π/2)``, τ = 1 − t being
    DDPM's noise fraction: ᾱ(1) = 1, ᾱ(0) = 0 (to float round-off), increasing in t.

    Args:
        t: Times in [0, 1], any shape.
        offset: s, which keeps the steps near the data end from being too small.

    Returns:
        ᾱ(t), same shape and dtype as ``t``, clamped into [0, 1].
    """
    scale = math.pi / 2 / (1 + offset)
    value = torch.cos((1 - t + offset) * scale).square() / math.cos(offset * scale) ** 2
    return value.clamp(0.0, 1.0)


def ddpm_schedule(
    num_steps: Steps,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    max_beta: float = MAX_BETA,
) -> tuple[Tensor, Tensor]:
    """ᾱ at both ends of every step of THE K-step grid, as a K-step DDPM uses them.

    ᾱ at t_k + Δt_k is :func:`cosine_alpha_bar`; at t_k it is that times (1 − β_k) with
    β_k = min(1 − ᾱ(t_k)/ᾱ(t_k + Δt_k), ``max_beta``), DDPM's clipped β. Only the first
    step (t_0 = 0, where ᾱ = 0) is clipped, so its start is ᾱ = 0.001·ᾱ(t_1) instead of 0
    and its data prediction stays finite. This is the official DPPO schedule on K levels
    (``cosine_beta_schedule(K)``), read in flowrl's time.

    On a non-uniform :class:`~flowrl.flow.times.TimeGrid` the same rule reads ᾱ at its knots
    (DDIM's sub-sequence of levels), so BOSS grids work here too.

    Args:
        num_steps: K ≥ 1 or a :class:`~flowrl.flow.times.TimeGrid`.
        device: Device of the returned tensors.
        dtype: Floating dtype (computed in float64, then cast).
        max_beta: The largest β of a step, in (0, 1).

    Returns:
        ``(alpha_bar_start, alpha_bar_end)``, each (K,): ᾱ at t_k and at t_k + Δt_k.
    """
    if not 0 < max_beta < 1:
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}")
    t, dt = time_grid(num_steps, device=device, dtype=torch.float64)
    end = cosine_alpha_bar(t + dt)
    beta = (1 - cosine_alpha_bar(t) / end).clamp(0.0, max_beta)
    start = end * (1 - beta)
    return start.to(dtype), end.to(dtype)


def ddpm_posterior(
    data: Tensor, x: Tensor, alpha_bar_s: Tensor | float, alpha_bar_u: Tensor | float
) -> tuple[Tensor, Tensor]:
    """DDPM's posterior q(x_u | x_s, x1): the textbook mean and variance.

    With α = ᾱ_s/ᾱ_u and β = 1 − α: mean ``√ᾱ_u·β/(1 − ᾱ_s)·x1 + √α·(1 − ᾱ_u)/(1 − ᾱ_s)·x_s``
    and variance ``β·(1 − ᾱ_u)/(1 − ᾱ_s)``. :func:`denoising_step` with η = 1 gives the same
    Gaussian (written through ε̂), which the tests check.

    Args:
        data: Data (or its prediction) x1, shape (B, ...).
        x: The state x_s, shape (B, ...).
        alpha_bar_s: ᾱ at the noisier end, a float or broadcastable to ``x``.
        alpha_bar_u: ᾱ at the cleaner end.

    Returns:
        ``(mean, variance)``; the mean has the shape of ``x``, the variance broadcasts to it.
    """
    ab_s = torch.as_tensor(alpha_bar_s, dtype=x.dtype, device=x.device)
    ab_u = torch.as_tensor(alpha_bar_u, dtype=x.dtype, device=x.device)
    alpha = ab_s / ab_u
    beta = 1 - alpha
    mean = (ab_u.sqrt() * beta * data + alpha.sqrt() * (1 - ab_u) * x) / (1 - ab_s)
    return mean, beta * (1 - ab_u) / (1 - ab_s)


def denoising_step(
    x: Tensor,
    eps: Tensor,
    alpha_bar_s: Tensor,
    alpha_bar_u: Tensor,
    *,
    eta: float = 1.0,
    clip: float | None = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """The Gaussian of one DDIM(η) denoising step from x_s to x_u, given ε̂.

    ``x̂1 = (x_s − √(1 − ᾱ_s)·ε̂)/√ᾱ_s``, clamped to [−clip, clip] (the action box); ε̂ is
    then recomputed from the clamped x̂1, so that η = 1 is exactly DDPM's posterior at x̂1.
    ``σ = η·√((1 − ᾱ_u)/(1 − ᾱ_s)·(1 − ᾱ_s/ᾱ_u))`` and
    ``mean = √ᾱ_u·x̂1 + √(1 − ᾱ_u − σ²)·ε̂``.

    Args:
        x: States x_s, shape (B, ...).
        eps: Predicted noise ε̂(s, x_s), shape (B, ...).
        alpha_bar_s: ᾱ at the start of the step, broadcastable to ``x`` (e.g. (B, 1)).
        alpha_bar_u: ᾱ at its end, > ``alpha_bar_s``.
        eta: DDIM's η ≥ 0 (1: DDPM, 0: deterministic DDIM).
        clip: Bound of |x̂1| (None: no clamp).

    Returns:
        ``(mean, sigma, data_hat)``: mean (B, ...), σ broadcastable to it (before any floor
        a sampler puts on it), and the clamped x̂1.
    """
    ab_s = torch.as_tensor(alpha_bar_s, dtype=x.dtype, device=x.device)
    ab_u = torch.as_tensor(alpha_bar_u, dtype=x.dtype, device=x.device)
    data_hat = (x - (1 - ab_s).sqrt() * eps) / ab_s.sqrt()
    if clip is not None:
        data_hat = data_hat.clamp(-clip, clip)
        eps = (x - ab_s.sqrt() * data_hat) / (1 - ab_s).sqrt()
    sigma = eta * ((1 - ab_u) / (1 - ab_s) * (1 - ab_s / ab_u)).clamp(min=0).sqrt()
    direction = (1 - ab_u - sigma.square()).clamp(min=0).sqrt()
    return ab_u.sqrt() * data_hat + direction * eps, sigma, data_hat


def diffusion_sample(
    eps_fn: EpsilonFn,
    x0: Tensor,
    num_steps: Steps,
    *,
    eta: float = 1.0,
    clip: float | None = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample x1 from noise x0 with K DDIM(η) steps on THE grid (η = 1: DDPM).

    No floor on σ: the last step (ᾱ_u = 1) is noiseless. Policies that explore add their
    own floor (:class:`~flowrl.policies.DiffusionPolicy`).

    Args:
        eps_fn: The noise predictor.
        x0: The chain start at t = 0, shape (B, ...), typically standard normal.
        num_steps: K ≥ 1 or a :class:`~flowrl.flow.times.TimeGrid`.
        eta: DDIM's η.
        clip: Bound of |x̂1| in every step.
        generator: RNG for the injected noise.

    Returns:
        The final state, shape (B, ...).
    """
    t, _ = time_grid(num_steps, device=x0.device, dtype=x0.dtype)
    start, end = ddpm_schedule(num_steps, device=x0.device, dtype=x0.dtype)
    x = x0
    for k in range(num_steps_of(num_steps)):
        eps = eps_fn(t[k].expand(x.shape[0]), x)
        mean, sigma, _ = denoising_step(x, eps, start[k], end[k], eta=eta, clip=clip)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = mean + sigma * noise
    return x


def epsilon_from_velocity(
    velocity: Callable[[Tensor, Tensor], Tensor], x: Tensor, alpha_bar: Tensor
) -> Tensor:
    """ε̂ of a diffusion state from a flow-matching velocity field (linear path), exactly.

    ``x = √ᾱ·x1 + √(1−ᾱ)·ε`` is the linear-path point ``(1−τ)·ε + τ·x1`` scaled by
    ``c = √ᾱ + √(1−ᾱ)``, at path time ``τ = √ᾱ/c``; the linear path's noise estimate there
    is ``x/c − τ·v(τ, x/c)``. So a flow trained by flow matching serves as a DDPM
    ε-predictor without retraining.

    Args:
        velocity: Velocity field ``v(t (B,), x (B, ...))`` of the linear path.
        x: Diffusion states, shape (B, ...).
        alpha_bar: ᾱ of each state, shape (B,).

    Returns:
        ε̂, shape (B, ...).
    """
    root, root_c = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    scale = root + root_c
    tau = root / scale
    x_lin = x / expand_time(scale, x)
    return x_lin - expand_time(tau, x) * velocity(tau, x_lin)


def epsilon_loss(eps_fn: EpsilonFn, data: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """The ε-prediction denoising loss ``E‖ε̂(t, x_t) − ε‖²`` of DDPM, at flowrl times.

    ``x_t = √ᾱ(t)·x1 + √(1−ᾱ(t))·ε`` with the continuous :func:`cosine_alpha_bar`, so the
    net learns every time in [0, 1] and any K samples from it.

    Args:
        eps_fn: The noise predictor.
        data: Data x1, shape (B, ...).
        t: Times, shape (B,).
        noise: ε, shape (B, ...).

    Returns:
        The batch mean of the per-sample mean squared error over the non-batch dims.
    """
    alpha_bar = expand_time(cosine_alpha_bar(t), data)
    x_t = alpha_bar.sqrt() * data + (1 - alpha_bar).sqrt() * noise
    return (eps_fn(t, x_t) - noise).square().flatten(1).mean(dim=1).mean()
