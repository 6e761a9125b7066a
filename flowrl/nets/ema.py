"""Exponential moving average of a module's parameters."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA(nn.Module):
    """Keeps ``shadow ← decay·shadow + (1 − decay)·θ`` for every parameter θ of a module.

    Buffers (normalizer statistics, counters) are copied, not averaged: they are not
    trained by gradient steps, and averaging would turn an infinite bound into NaN.
    The effective decay warms up as ``min(decay, (1 + n) / (10 + n))`` after n updates, so
    early averages are not dominated by the random initialisation.

    Args:
        model: The module being trained; a frozen deep copy becomes the shadow.
        decay: Target decay (0.999 averages roughly the last 1000 steps).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow towards ``model``'s current weights."""
        n = int(self.num_updates.item())
        decay = min(self.decay, (1 + n) / (10 + n))
        params = dict(model.named_parameters())
        for name, value in self.shadow.named_parameters():
            value.lerp_(params[name].detach(), 1.0 - decay)
        buffers = dict(model.named_buffers())
        for name, value in self.shadow.named_buffers():
            value.copy_(buffers[name])
        self.num_updates += 1
