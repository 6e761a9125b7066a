"""Entropy control for policy-gradient updates: Clip-Cov and KL-Cov (arXiv 2505.22617).

"The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models" (Cui et al.,
2025) shows that a policy's entropy falls, step by step, in proportion to the covariance
between a sample's log-probability and its advantage: confident actions with high advantage
drive the collapse. Per sample i of a minibatch the covariance term is

    c_i = (log π(a_i) − mean_j log π(a_j)) · (A_i − mean_j A_j),

and the two remedies act on the few samples with the largest c_i:

* **Clip-Cov**: among the samples whose c_i lies in (lower, upper) and whose PPO clip is not
  already active, a random ``fraction`` (at least one) is removed from the policy gradient;
* **KL-Cov**: the ``fraction`` (at least one) of largest c_i get a penalty β·|log ratio| on
  top of the unclipped surrogate −A·ratio, which replaces PPO's clipped one for every sample.

The paper's values are for LLM tokens, millions per batch: Clip-Cov fraction 2e-4 with bounds
(1, 5), KL-Cov fraction 2e-3 with β = 1. Its KL-Cov drops PPO's clip; flowrl follows it.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "ENTROPY_CONTROLS",
    "EntropyControl",
    "clip_cov_keep",
    "covariance_terms",
    "kl_cov_selection",
    "selection_size",
    "surrogate_loss",
]

# The paper's shares of a batch (LLM tokens): Clip-Cov 2e-4, KL-Cov 2e-3.
PAPER_FRACTION = {"clip_cov": 2e-4, "kl_cov": 2e-3}

EntropyControl = Literal["clip_cov", "kl_cov"]
ENTROPY_CONTROLS: tuple[str, ...] = ("clip_cov", "kl_cov")


def covariance_terms(log_prob: Tensor, advantages: Tensor) -> Tensor:
    """Per-sample covariance terms c_i between centered log-probs and advantages, (M,).

    Args:
        log_prob: log π(a_i), shape (M,) (detached by this function).
        advantages: A_i, shape (M,).
    """
    log_prob = log_prob.detach().to(torch.float64)
    advantages = advantages.detach().to(torch.float64)
    return (log_prob - log_prob.mean()) * (advantages - advantages.mean())


def selection_size(fraction: float, count: int) -> int:
    """max(⌊fraction·count⌋, 1): how many samples a rule selects from ``count``."""
    return max(int(fraction * count), 1)


def kl_cov_selection(cov: Tensor, fraction: float) -> Tensor:
    """Boolean mask (M,) of the ``selection_size(fraction, M)`` largest covariance terms."""
    k = selection_size(fraction, cov.numel())
    mask = torch.zeros_like(cov, dtype=torch.bool)
    mask[torch.topk(cov, k).indices] = True
    return mask


def clip_cov_keep(
    cov: Tensor,
    fraction: float,
    bounds: tuple[float, float],
    already_clipped: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Float mask (M,): 0 for the samples Clip-Cov removes from the gradient, 1 elsewhere.

    Args:
        cov: Covariance terms, shape (M,).
        fraction: Share of the minibatch to remove (at least one sample, if any qualifies).
        bounds: (lower, upper): only samples with lower < c_i < upper qualify.
        already_clipped: (M,) bool, samples whose PPO clip is active (they do not qualify:
            they carry no gradient already).
        generator: RNG of the random choice among the qualifying samples.
    """
    lower, upper = bounds
    candidates = torch.nonzero((cov > lower) & (cov < upper) & ~already_clipped).flatten()
    keep = torch.ones_like(cov)
    if candidates.numel():
        count = min(selection_size(fraction, cov.numel()), candidates.numel())
        order = torch.randperm(candidates.numel(), generator=generator, device=cov.device)
        keep[candidates[order[:count]]] = 0.0
    return keep


def surrogate_loss(
    advantages: Tensor,
    ratio: Tensor,
    log_ratio: Tensor,
    clip_range: float,
    *,
    control: EntropyControl | None = None,
    cov: Tensor | None = None,
    fraction: float | None = None,
    clip_cov_bounds: tuple[float, float] = (1.0, 5.0),
    kl_cov_coef: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, float]:
    """PPO's clipped surrogate loss, or its Clip-Cov / KL-Cov form; and the share acted on.

    Args:
        advantages: (M,) advantages (normalized if the learner does).
        ratio: (M,) exp(log_ratio).
        log_ratio: (M,) log-ratios.
        clip_range: PPO's ε.
        control: None (plain PPO), ``"clip_cov"`` or ``"kl_cov"``.
        cov: (M,) :func:`covariance_terms` (needed with a control).
        fraction: Share of the minibatch the control acts on (None: the paper's).
        clip_cov_bounds: Clip-Cov's window (lower, upper) of covariance terms.
        kl_cov_coef: β of KL-Cov.
        generator: RNG of Clip-Cov's random choice.

    Returns:
        ``(loss (), share of samples removed or penalized)``.
    """
    if control is None:
        loss = -torch.min(
            advantages * ratio, advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
        ).mean()
        return loss, 0.0
    if cov is None:
        raise ValueError(f"entropy control {control!r} needs the covariance terms")
    fraction = PAPER_FRACTION[control] if fraction is None else fraction
    if control == "clip_cov":
        unclipped = -advantages * ratio
        clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
        keep = clip_cov_keep(cov, fraction, clip_cov_bounds, clipped > unclipped, generator)
        loss = (torch.maximum(unclipped, clipped) * keep).mean()
        return loss, float((keep == 0).float().mean())
    if control != "kl_cov":
        raise ValueError(f"unknown entropy control {control!r}; choose one of {ENTROPY_CONTROLS}")
    selected = kl_cov_selection(cov, fraction)
    per_sample = -advantages * ratio + selected * kl_cov_coef * log_ratio.abs()
    return per_sample.mean(), float(selected.float().mean())
