"""Optimizer helpers: one guarded step (BC, generators) and learning-rate schedules.

The schedules follow SB3's convention: a callable of the remaining progress, 1 at the start
of ``learn`` and 0 at its end, for ``learning_rate`` (and the on-policy core's
``critic_learning_rate``)::

    model = ReinFlow("FlowPolicy", env, learning_rate=cosine_schedule(1e-4, final_fraction=0.1))

They are small frozen dataclasses, so SB3 can pickle them into ``model.zip`` and a loaded
model keeps its schedule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = [
    "SCHEDULE_KINDS",
    "ConstantSchedule",
    "CosineSchedule",
    "LinearSchedule",
    "cosine_schedule",
    "guarded_step",
    "linear_schedule",
    "make_schedule",
]

ScheduleKind = Literal["constant", "linear", "cosine"]
SCHEDULE_KINDS: tuple[str, ...] = ("constant", "linear", "cosine")


def guarded_step(
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    params: Iterable[nn.Parameter],
    grad_clip: float | None,
    *,
    what: str,
    step: int,
    hint: str,
) -> float:
    """Backward, clip and step, unless the loss is NaN or inf (then nothing is applied).

    Args:
        loss: Scalar loss with its graph.
        optimizer: The optimizer of ``params``.
        params: Parameters whose gradient norm is clipped.
        grad_clip: Max gradient norm; None or 0 disables clipping.
        what: Name of the loss for the error message (e.g. ``"BC"``).
        step: Current step, for the error message.
        hint: What the user should check, appended to the error message.

    Returns:
        The gradient norm before clipping.

    Raises:
        FloatingPointError: If the loss is not finite; parameters and optimizer state are
            left untouched.
    """
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"{what} loss is {loss.item()} at step {step}; the update was not applied. {hint}"
        )
    params = list(params)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or float("inf"))
    optimizer.step()
    return float(grad_norm)


# ---------------------------------------------------------------------- learning-rate schedules


def _check_schedule(initial_value: float, final_fraction: float) -> None:
    if not (math.isfinite(initial_value) and initial_value > 0):
        raise ValueError(f"a schedule's initial_value must be > 0, got {initial_value}")
    if not (math.isfinite(final_fraction) and final_fraction >= 0):
        raise ValueError(
            f"final_fraction must be >= 0 (the end value over the start value), got "
            f"{final_fraction}"
        )


def _done(progress_remaining: float) -> float:
    """The fraction of training done, 1 − progress, kept in [0, 1]."""
    return min(max(1.0 - float(progress_remaining), 0.0), 1.0)


@dataclass(frozen=True)
class ConstantSchedule:
    """``initial_value`` throughout (a picklable stand-in for a constant learning rate)."""

    initial_value: float

    def __post_init__(self) -> None:
        _check_schedule(self.initial_value, 1.0)

    def __call__(self, progress_remaining: float) -> float:
        """The value at SB3's remaining progress (1 → 0): always ``initial_value``."""
        return self.initial_value


@dataclass(frozen=True)
class LinearSchedule:
    """Linear from ``initial_value`` (progress 1) to ``final_fraction``·it (progress 0)."""

    initial_value: float
    final_fraction: float = 0.0

    def __post_init__(self) -> None:
        _check_schedule(self.initial_value, self.final_fraction)

    def __call__(self, progress_remaining: float) -> float:
        """The value at SB3's remaining progress (1 → 0; kept in [0, 1])."""
        fraction = 1.0 + (self.final_fraction - 1.0) * _done(progress_remaining)
        return self.initial_value * fraction


@dataclass(frozen=True)
class CosineSchedule:
    """Half a cosine from ``initial_value`` (progress 1) to ``final_fraction``·it (progress 0)."""

    initial_value: float
    final_fraction: float = 0.0

    def __post_init__(self) -> None:
        _check_schedule(self.initial_value, self.final_fraction)

    def __call__(self, progress_remaining: float) -> float:
        """The value at SB3's remaining progress (1 → 0; kept in [0, 1])."""
        weight = 0.5 * (1.0 + math.cos(math.pi * _done(progress_remaining)))
        fraction = self.final_fraction + (1.0 - self.final_fraction) * weight
        return self.initial_value * fraction


def linear_schedule(initial_value: float, final_fraction: float = 0.0) -> LinearSchedule:
    """A learning rate decaying linearly to ``final_fraction`` of ``initial_value``.

    Args:
        initial_value: The value at the start of ``learn`` (progress remaining 1).
        final_fraction: The end value over the start value (0: decay to 0).

    Returns:
        A picklable callable of SB3's remaining progress (1 → 0).
    """
    return LinearSchedule(initial_value, final_fraction)


def cosine_schedule(initial_value: float, final_fraction: float = 0.0) -> CosineSchedule:
    """A learning rate following half a cosine down to ``final_fraction`` of ``initial_value``.

    Args:
        initial_value: The value at the start of ``learn`` (progress remaining 1).
        final_fraction: The end value over the start value (0: decay to 0).

    Returns:
        A picklable callable of SB3's remaining progress (1 → 0).
    """
    return CosineSchedule(initial_value, final_fraction)


def make_schedule(
    kind: ScheduleKind | str, initial_value: float, final_fraction: float = 0.0
) -> ConstantSchedule | LinearSchedule | CosineSchedule:
    """The schedule ``kind`` ("constant", "linear" or "cosine") from ``initial_value``.

    Args:
        kind: One of :data:`SCHEDULE_KINDS`.
        initial_value: The value at the start of ``learn``.
        final_fraction: The end value over the start value (ignored by "constant").

    Raises:
        ValueError: For another kind, a non-positive ``initial_value`` or a negative
            ``final_fraction``.
    """
    if kind == "constant":
        return ConstantSchedule(initial_value)
    if kind == "linear":
        return LinearSchedule(initial_value, final_fraction)
    if kind == "cosine":
        return CosineSchedule(initial_value, final_fraction)
    raise ValueError(f"schedule kind must be one of {SCHEDULE_KINDS}, got {kind!r}")
