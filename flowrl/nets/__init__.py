"""Networks: plain ``nn.Module`` building blocks (embeddings, MLPs, EMA)."""

from flowrl.nets.ema import EMA
from flowrl.nets.embeddings import SinusoidalEmbedding
from flowrl.nets.mlp import MLP, ResidualBlock, VelocityMLP, activation, zero_init_

__all__ = [
    "EMA",
    "MLP",
    "ResidualBlock",
    "SinusoidalEmbedding",
    "VelocityMLP",
    "activation",
    "zero_init_",
]
