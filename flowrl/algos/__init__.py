"""Learners: behaviour cloning and Stable-Baselines3 algorithms for flow policies."""

from flowrl.algos.bc import BCConfig, FlowBC
from flowrl.algos.buffers import ChainRolloutBuffer
from flowrl.algos.reinflow import ReinFlow

__all__ = ["BCConfig", "ChainRolloutBuffer", "FlowBC", "ReinFlow"]
