"""Flow-matching losses: conditional flow matching, shortcut self-consistency, DiffusionNFT.

Reductions are explicit: per-sample losses are the mean squared error over the feature
dimensions of one sample (so their scale does not grow with the action or image size),
and ``reduction`` then says what happens across the batch (``"mean"``, ``"sum"`` or
``"none"`` for the (B,) vector).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from flowrl.flow.paths import expand_time, linear_path_sample
from flowrl.flow.times import TimeSampler, UniformTime

__all__ = [
    "Reduction",
    "ShortcutLoss",
    "ShortcutVelocityFn",
    "flow_matching_loss",
    "nft_loss",
    "optimality_probability",
    "reduce_batch",
    "shortcut_loss",
]

Reduction = Literal["mean", "sum", "none"]

ShortcutVelocityFn = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]
"""``velocity(t (B,), x (B, ...), d (B,), cond (B, ...) | None) -> v (B, ...)``.

d is the step size to be taken; cond is the conditioning of exactly these rows (the loss
splits the batch, so it hands each call the matching slice)."""


def reduce_batch(per_sample: Tensor, reduction: Reduction) -> Tensor:
    """Reduce a per-sample loss (B,) over the batch.

    Args:
        per_sample: Loss of each sample, shape (B,).
        reduction: ``"mean"`` → scalar batch mean, ``"sum"`` → scalar sum, ``"none"`` → (B,).

    Returns:
        The reduced loss.
    """
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"unknown reduction {reduction!r}; use 'mean', 'sum' or 'none'")


def _per_sample_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over the non-batch dims, shape (B,)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    return (pred - target).square().flatten(1).mean(dim=1)


def flow_matching_loss(
    velocity: Callable[[Tensor, Tensor], Tensor],
    data: Tensor,
    t: Tensor,
    noise: Tensor,
    reduction: Reduction = "mean",
) -> Tensor:
    """Conditional flow matching on the linear path: ``‖v(t, x_t) − (x1 − ε)‖²``.

    Args:
        velocity: ``velocity(t (B,), x_t (B, ...)) -> (B, ...)``, conditioning closed over.
        data: x1, shape (B, ...).
        t: Training times, shape (B,), e.g. from a :class:`~flowrl.flow.times.TimeSampler`.
        noise: ε ~ N(0, I), shape (B, ...).
        reduction: Batch reduction, see :func:`reduce_batch`.

    Returns:
        The loss (scalar, or (B,) for ``"none"``).
    """
    sample = linear_path_sample(noise, data, t)
    return reduce_batch(_per_sample_mse(velocity(t, sample.x_t), sample.velocity), reduction)


@dataclass(frozen=True)
class ShortcutLoss:
    """Terms of the shortcut-model loss.

    Attributes:
        loss: Total loss over the whole batch (scalar), what the optimizer minimises.
        flow_matching: Batch mean over the flow-matching rows (scalar, detached).
        self_consistency: Batch mean over the bootstrap rows (scalar, detached).
    """

    loss: Tensor
    flow_matching: Tensor
    self_consistency: Tensor


def shortcut_loss(
    velocity: ShortcutVelocityFn,
    data: Tensor,
    noise: Tensor,
    cond: Tensor | None = None,
    *,
    time_sampler: TimeSampler | None = None,
    bootstrap_fraction: float = 0.25,
    max_steps: int = 128,
    generator: torch.Generator | None = None,
) -> ShortcutLoss:
    """Shortcut-model loss (Frans et al. 2024, arXiv 2410.12557) on the linear path.

    The network takes the step size d it is asked to jump. Two kinds of rows share a batch:

    * flow matching (1 − ``bootstrap_fraction`` of the rows): t from ``time_sampler``,
      d = 1/``max_steps`` (the finest step, treated as the ODE itself), target x1 − ε;
    * self-consistency (the rest): a big step D = 2^−e, e uniform in
      {0, …, log2(max_steps) − 1}, t a multiple of D; the target for v(t, x_t, D) is the
      average of two half steps of size D/2 taken by the same network without gradient,
      ``(v(t, x_t, D/2) + v(t + D/2, x_t + D/2·v(t, x_t, D/2), D/2)) / 2``.

    Sampling with K steps then queries d = 1/K on THE grid, so K ∈ {1, 2, 4, …, max_steps}.

    Args:
        velocity: ``velocity(t (B,), x (B, ...), d (B,), cond) -> (B, ...)``.
        data: x1, shape (B, ...).
        noise: ε ~ N(0, I), shape (B, ...).
        cond: Per-row conditioning, shape (B, ...), or None.
        time_sampler: Times for the flow-matching rows (default uniform).
        bootstrap_fraction: Fraction of rows trained for self-consistency, in [0, 1).
        max_steps: M, a power of two: the finest step is 1/M.
        generator: RNG for times and step sizes.

    Returns:
        The :class:`ShortcutLoss` (total batch-mean loss and its two parts).
    """
    if max_steps < 2 or max_steps & (max_steps - 1):
        raise ValueError(f"max_steps must be a power of two >= 2, got {max_steps}")
    if not 0.0 <= bootstrap_fraction < 1.0:
        raise ValueError(f"bootstrap_fraction must lie in [0, 1), got {bootstrap_fraction}")
    batch = data.shape[0]
    n_boot = int(round(batch * bootstrap_fraction))
    n_fm = batch - n_boot
    dev, dtype = data.device, data.dtype
    cond_sc = None if cond is None else cond[n_fm:]
    time_sampler = time_sampler or UniformTime()

    # Flow-matching rows: d is the finest step.
    t_fm = time_sampler(n_fm, device=dev, dtype=dtype, generator=generator)
    d_fm = torch.full((n_fm,), 1.0 / max_steps, device=dev, dtype=dtype)
    fm = linear_path_sample(noise[:n_fm], data[:n_fm], t_fm)
    target_fm = fm.velocity

    # Self-consistency rows: a big step D built from two half steps of the network itself.
    n_levels = int(math.log2(max_steps))
    exponent = torch.randint(0, n_levels, (n_boot,), device=dev, generator=generator)
    big = torch.pow(2.0, -exponent.to(dtype))
    sections = torch.pow(2, exponent)
    start = torch.floor(torch.rand(n_boot, device=dev, dtype=dtype, generator=generator) * sections)
    t_sc = start.to(dtype) * big
    half = big / 2
    x_sc = fm.x_t.new_empty(0)
    target_sc = fm.x_t.new_empty(0)
    if n_boot > 0:
        x_sc = linear_path_sample(noise[n_fm:], data[n_fm:], t_sc).x_t
        with torch.no_grad():
            v1 = velocity(t_sc, x_sc, half, cond_sc)
            x_mid = x_sc + expand_time(half, x_sc) * v1
            v2 = velocity(t_sc + half, x_mid, half, cond_sc)
            target_sc = (v1 + v2) / 2

    # One forward pass over the whole batch keeps batch statistics and cost simple.
    t_all = torch.cat([t_fm, t_sc])
    x_all = torch.cat([fm.x_t, x_sc]) if n_boot > 0 else fm.x_t
    d_all = torch.cat([d_fm, big])
    target = torch.cat([target_fm, target_sc]) if n_boot > 0 else target_fm
    per_sample = _per_sample_mse(velocity(t_all, x_all, d_all, cond), target)
    zero = per_sample.new_zeros(())
    return ShortcutLoss(
        loss=per_sample.mean(),
        flow_matching=per_sample[:n_fm].mean().detach() if n_fm else zero,
        self_consistency=per_sample[n_fm:].mean().detach() if n_boot else zero,
    )


# ---------------------------------------------------------------------- DiffusionNFT


def optimality_probability(advantages: Tensor, clip_max: float = 1.0) -> Tensor:
    """DiffusionNFT's optimality probability r ∈ [0, 1] of each sample from its advantage.

    r = clip(A, −c, c) / (2c) + 1/2 with c = ``clip_max``: a sample at the baseline has
    r = 1/2 (no push either way), a sample c or more above it is purely positive (r = 1), c
    or more below purely negative (r = 0). Zheng et al. 2025 (arXiv 2509.16117) map rewards
    normalized within a group of samples of one prompt this way.

    Args:
        advantages: Normalized advantages A, any shape.
        clip_max: c > 0.

    Returns:
        r, the shape of ``advantages``.

    Raises:
        ValueError: If ``clip_max`` is not a positive finite number.
    """
    if not (math.isfinite(clip_max) and clip_max > 0):
        raise ValueError(f"clip_max must be a positive finite number, got {clip_max}")
    return advantages.clamp(-clip_max, clip_max) / (2.0 * clip_max) + 0.5


def nft_loss(
    velocity: Tensor,
    old_velocity: Tensor,
    target: Tensor,
    optimality: Tensor,
    *,
    beta: float = 1.0,
    scale: Tensor | None = None,
    adaptive: bool = False,
    reduction: Reduction = "mean",
) -> Tensor:
    """DiffusionNFT's negative-aware flow-matching loss (Zheng et al. 2025, arXiv 2509.16117).

    From the trained velocity v_θ and the sampling ("old") policy's v_old at the same noisy
    points x_t (any forward-process draw; no sampler, no likelihood), build the implicit
    positive and negative policies

        v⁺ = (1 − β)·v_old + β·v_θ,      v⁻ = (1 + β)·v_old − β·v_θ,

    and fit v⁺ to the flow-matching target u = x1 − ε on samples in proportion to their
    optimality probability r, v⁻ on the rest:

        ℓ = [ r·‖s·(v⁺ − u)‖² + (1 − r)·‖s·(v⁻ − u)‖² ] / β      (mean over feature dims).

    Written with e = v_old − u and d = v_θ − v_old, ℓ·β = ‖e‖² + β²‖d‖² + 2β(2r − 1)⟨e, d⟩:
    its gradient at v_θ = v_old is an advantage-signed flow-matching gradient (towards the
    data for r > 1/2, away for r < 1/2), and β²‖d‖² holds v_θ near v_old, so β is the step's
    trust region (small β: large steps). Its minimizer is v_old + (2r − 1)(u − v_old)/β,
    averaged over the samples that reach x_t.

    Args:
        velocity: v_θ(x_t, t), shape (B, ...), with gradient.
        old_velocity: v_old(x_t, t), shape (B, ...) (detached here).
        target: u = x1 − ε, shape (B, ...).
        optimality: r ∈ [0, 1] per sample, shape (B,) (:func:`optimality_probability`).
        beta: β > 0.
        scale: Per-sample factor s of the residuals, broadcastable to (B, ...) (e.g.
            ``1 − t``: the residual of the data prediction x̂1 = x_t + (1 − t)·v, the
            paper's parameterization); None: 1 (the velocity residual).
        adaptive: Divide each branch's squared error by the detached mean absolute error of
            that sample (the paper's adaptive weighting, which balances noise levels).
        reduction: Batch reduction, see :func:`reduce_batch`.

    Returns:
        The loss.

    Raises:
        ValueError: For shapes that do not match, β ≤ 0, or r outside [0, 1].
    """
    if velocity.shape != old_velocity.shape or velocity.shape != target.shape:
        raise ValueError(
            f"velocity {tuple(velocity.shape)}, old_velocity {tuple(old_velocity.shape)} and "
            f"target {tuple(target.shape)} must have one shape"
        )
    if optimality.shape != velocity.shape[:1]:
        raise ValueError(
            f"optimality must have shape ({velocity.shape[0]},), one r per sample, got "
            f"{tuple(optimality.shape)}"
        )
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a positive finite number, got {beta}")
    if bool(((optimality < 0) | (optimality > 1)).any()):
        raise ValueError("optimality probabilities r must lie in [0, 1]")
    old = old_velocity.detach()
    positive = (1.0 - beta) * old + beta * velocity - target
    negative = (1.0 + beta) * old - beta * velocity - target
    if scale is not None:
        positive, negative = scale * positive, scale * negative

    def branch(residual: Tensor) -> Tensor:
        err = residual.square().flatten(1).mean(dim=1)
        if adaptive:
            err = err / residual.detach().abs().flatten(1).mean(dim=1).clamp_min(1e-5)
        return err

    r = optimality.to(positive.dtype)
    per_sample = (r * branch(positive) + (1.0 - r) * branch(negative)) / beta
    return reduce_batch(per_sample, reduction)
