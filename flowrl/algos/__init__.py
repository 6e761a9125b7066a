"""Learners: behaviour cloning and Stable-Baselines3 algorithms for flow policies.

The on-policy learners (ReinFlow, PolicyFlow) share one PPO update,
:class:`~flowrl.algos.on_policy.OnPolicyCore`.
"""

from flowrl.algos.bc import BCConfig, FlowBC
from flowrl.algos.buffers import ChainRolloutBuffer, FieldRolloutBuffer
from flowrl.algos.dppo import DPPO
from flowrl.algos.fpo import FPO
from flowrl.algos.on_policy import OnPolicyCore
from flowrl.algos.policyflow import PolicyFlow
from flowrl.algos.reinflow import ReinFlow

__all__ = [
    "DPPO",
    "FPO",
    "BCConfig",
    "ChainRolloutBuffer",
    "FieldRolloutBuffer",
    "FlowBC",
    "OnPolicyCore",
    "PolicyFlow",
    "ReinFlow",
]
