"""Learners: behaviour cloning and Stable-Baselines3 algorithms for flow policies.

The on-policy learners (ReinFlow, PolicyFlow, FPO, DPPO, NFT) share one PPO update,
:class:`~flowrl.algos.on_policy.OnPolicyCore`; the off-policy ones (FlowSAC, DSRL, EDP) learn
from a replay buffer as SB3's SAC does. Reward-free exploration (EDPExplore, and SAC with an
RND or count bonus as baselines) relabels replay batches with an intrinsic reward
(:mod:`flowrl.algos.exploration`).
"""

from flowrl.algos.bc import BCConfig, FlowBC
from flowrl.algos.buffers import ChainRolloutBuffer, FieldRolloutBuffer
from flowrl.algos.dppo import DPPO
from flowrl.algos.dsrl import DSRL, DSRLTD3, LatentNoiseVecEnv
from flowrl.algos.edp import EDP, EDPExplore, EDPExploreFlow
from flowrl.algos.exploration import ExplorationSAC
from flowrl.algos.flow_sac import FlowSAC
from flowrl.algos.fpo import FPO
from flowrl.algos.nft import NFT
from flowrl.algos.on_policy import OnPolicyCore
from flowrl.algos.policyflow import PolicyFlow
from flowrl.algos.reinflow import ReinFlow

__all__ = [
    "DPPO",
    "DSRL",
    "DSRLTD3",
    "EDP",
    "EDPExplore",
    "EDPExploreFlow",
    "ExplorationSAC",
    "FPO",
    "FlowSAC",
    "BCConfig",
    "ChainRolloutBuffer",
    "FieldRolloutBuffer",
    "LatentNoiseVecEnv",
    "NFT",
    "FlowBC",
    "OnPolicyCore",
    "PolicyFlow",
    "ReinFlow",
]
