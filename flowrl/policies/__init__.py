"""Policies: flow actors with their normalizers, and the SB3 policies that wrap them."""

from flowrl.policies.base import FlowPolicyBase, check_spaces
from flowrl.policies.diffusion import DiffusionActor, DiffusionPolicy
from flowrl.policies.edp import EDPPolicy
from flowrl.policies.flow_actor import FlowActor, FlowActorConfig
from flowrl.policies.flow_policy import FlowPolicy
from flowrl.policies.flow_sac import FlowSACPolicy
from flowrl.policies.fpo import FPOPolicy
from flowrl.policies.policyflow import PolicyFlowPolicy

__all__ = [
    "DiffusionActor",
    "DiffusionPolicy",
    "EDPPolicy",
    "FPOPolicy",
    "FlowActor",
    "FlowActorConfig",
    "FlowPolicy",
    "FlowPolicyBase",
    "FlowSACPolicy",
    "PolicyFlowPolicy",
    "check_spaces",
]
