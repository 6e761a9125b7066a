"""Sinusoidal embeddings of scalar inputs (flow time t, shortcut step size d)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["SinusoidalEmbedding"]


class SinusoidalEmbedding(nn.Module):
    """Embed a scalar in [0, 1] as ``[sin(ω_i·x), cos(ω_i·x)]`` over geometric ω_i.

    Low bandwidth by default: angular frequencies span [1, 32] rad per unit of t. A policy's
    velocity field changes smoothly in t, and with a handful of integration steps the
    network is queried at only K times; high frequencies (the 1 … 10⁴ of image diffusion
    models, whose t runs to 1000) let a small network fit each training t separately and
    generalise badly between grid points.

    Args:
        dim: Output width (even).
        min_frequency: Lowest angular frequency ω_0.
        max_frequency: Highest angular frequency.

    Shapes:
        input (B,) → output (B, dim).
    """

    def __init__(self, dim: int, min_frequency: float = 1.0, max_frequency: float = 32.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"embedding dim must be even and >= 2, got {dim}")
        if not 0 < min_frequency <= max_frequency:
            raise ValueError("need 0 < min_frequency <= max_frequency")
        self.dim = dim
        freqs = torch.exp(
            torch.linspace(math.log(min_frequency), math.log(max_frequency), dim // 2)
        )
        # Not persistent: the frequencies are a function of the constructor arguments.
        self.register_buffer("frequencies", freqs, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Embed ``x`` of shape (B,) into (B, dim)."""
        if x.dim() != 1:
            raise ValueError(f"expected a (B,) tensor, got shape {tuple(x.shape)}")
        angles = x[:, None].to(self.frequencies.dtype) * self.frequencies
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
