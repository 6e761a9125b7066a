"""One guarded optimizer step, shared by the supervised trainers (BC, generators)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["guarded_step"]


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
