"""Multilayer perceptrons: a residual conditional velocity network and a critic."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowrl.nets.embeddings import SinusoidalEmbedding

__all__ = ["ACTIVATIONS", "MLP", "ResidualBlock", "VelocityMLP", "activation", "zero_init_"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
}


def activation(name: str) -> nn.Module:
    """Build an activation module by name (relu, gelu, silu, mish, tanh, elu)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def zero_init_(layer: nn.Linear) -> nn.Linear:
    """Zero a linear layer's weight and bias in place and return it.

    A zero last layer makes a fresh velocity network output 0 everywhere, so an untrained
    flow starts as the identity map on noise rather than a random field.
    """
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class MLP(nn.Module):
    """Plain MLP ``in_dim → hidden… → out_dim`` (critics, value functions, noise heads).

    Args:
        in_dim: Input width.
        out_dim: Output width.
        hidden: Hidden widths, e.g. ``(256, 256)``.
        act: Activation name.
        layer_norm: LayerNorm after every hidden linear layer.
        zero_last: Zero-initialise the output layer.

    Shapes:
        (B, in_dim) → (B, out_dim).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (256, 256),
        act: str = "tanh",
        layer_norm: bool = False,
        zero_last: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if layer_norm:
                layers.append(nn.LayerNorm(h))
            layers.append(activation(act))
            width = h
        last = nn.Linear(width, out_dim)
        layers.append(zero_init_(last) if zero_last else last)
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, in_dim) to (B, out_dim)."""
        return self.net(x)


class ResidualBlock(nn.Module):
    """Pre-norm residual block ``x + W₂·act(W₁·LN(x))`` of constant width."""

    def __init__(self, width: int, act: str = "mish", expansion: int = 1):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width * expansion)
        self.act = activation(act)
        self.fc2 = nn.Linear(width * expansion, width)

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, width) to (B, width)."""
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class VelocityMLP(nn.Module):
    """Residual conditional velocity network ``v(t, x, cond[, d])``.

    The inputs ``[x, cond, emb(t)(, emb(d))]`` are projected to ``width``, passed through
    ``depth`` pre-norm residual blocks and a final LayerNorm, and read out linearly (zero
    initialised by default).

    Args:
        x_dim: Width of the flowing variable (Da·Ta for an action chunk, 2 for toy data).
        cond_dim: Width of the conditioning vector (Do, or 0 for unconditional models).
        width: Hidden width.
        depth: Number of residual blocks.
        time_dim: Width of the sinusoidal time embedding.
        step_size_input: Also condition on the shortcut step size d.
        act: Activation name.
        zero_last: Zero-initialise the output layer.
        max_frequency: Highest angular frequency of the time embeddings.
        gated: Gated velocity (Flow-G of "SAC Flow", arXiv 2509.25756):
            ``v = g ⊙ (ĥ − x)`` with a gate ``g = sigmoid(W_g·h)`` ∈ (0, 1) and a candidate
            ``ĥ`` read out by the output layer, so an Euler step
            ``x + Δt·v = (1 − Δt·g) ⊙ x + Δt·g ⊙ ĥ`` is a convex, GRU-like update of the state
            (for Δt ≤ 1) and gradients through K steps stay bounded. The gate starts open
            (bias ``gate_bias_init``, sigmoid(5) ≈ 0.993) with zero weights.
        gate_bias_init: Initial bias of the gate's pre-activation.

    Shapes:
        t (B,), x (B, x_dim), cond (B, cond_dim), d (B,) → v (B, x_dim).
    """

    def __init__(
        self,
        x_dim: int,
        cond_dim: int = 0,
        width: int = 256,
        depth: int = 3,
        time_dim: int = 32,
        step_size_input: bool = False,
        act: str = "mish",
        zero_last: bool = True,
        max_frequency: float = 32.0,
        gated: bool = False,
        gate_bias_init: float = 5.0,
    ):
        super().__init__()
        if x_dim < 1 or cond_dim < 0:
            raise ValueError(f"need x_dim >= 1 and cond_dim >= 0, got {x_dim}, {cond_dim}")
        self.x_dim, self.cond_dim = x_dim, cond_dim
        self.step_size_input = step_size_input
        self.time_embedding = SinusoidalEmbedding(time_dim, max_frequency=max_frequency)
        self.step_embedding = (
            SinusoidalEmbedding(time_dim, max_frequency=max_frequency) if step_size_input else None
        )
        in_dim = x_dim + cond_dim + time_dim * (2 if step_size_input else 1)
        self.input = nn.Linear(in_dim, width)
        self.blocks = nn.Sequential(*[ResidualBlock(width, act) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.output = nn.Linear(width, x_dim)
        if zero_last:
            zero_init_(self.output)
        self.gated = gated
        self.gate = nn.Linear(width, x_dim) if gated else None
        if self.gate is not None:
            nn.init.zeros_(self.gate.weight)
            nn.init.constant_(self.gate.bias, gate_bias_init)

    def forward(
        self, t: Tensor, x: Tensor, cond: Tensor | None = None, d: Tensor | None = None
    ) -> Tensor:
        """Velocity at (t, x) given the conditioning (and step size d for shortcut models).

        Args:
            t: Flow times, shape (B,).
            x: Positions, shape (B, x_dim).
            cond: Conditioning, shape (B, cond_dim); omit when ``cond_dim == 0``.
            d: Step sizes, shape (B,); required iff ``step_size_input``.

        Returns:
            Velocity, shape (B, x_dim).
        """
        if x.dim() != 2 or x.shape[1] != self.x_dim:
            raise ValueError(f"x must have shape (B, {self.x_dim}), got {tuple(x.shape)}")
        parts = [x]
        if self.cond_dim:
            if cond is None or cond.shape != (x.shape[0], self.cond_dim):
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(f"cond must have shape ({x.shape[0]}, {self.cond_dim}), got {got}")
            parts.append(cond)
        elif cond is not None and cond.numel():
            raise ValueError("this network has no conditioning input (cond_dim=0): omit cond")
        parts.append(self.time_embedding(t))
        if self.step_embedding is not None:
            if d is None:
                raise ValueError("this network was built with step_size_input=True: pass d")
            parts.append(self.step_embedding(d))
        elif d is not None:
            raise ValueError("this network has no step-size input (step_size_input=False)")
        h = self.norm(self.blocks(self.input(torch.cat(parts, dim=-1))))
        if self.gate is None:
            return self.output(h)
        return torch.sigmoid(self.gate(h)) * (self.output(h) - x)
