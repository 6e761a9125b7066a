"""Policies: flow actors with their normalizers, and the SB3 policies that wrap them."""

from flowrl.policies.flow_actor import FlowActor, FlowActorConfig
from flowrl.policies.flow_policy import FlowPolicy, check_spaces

__all__ = ["FlowActor", "FlowActorConfig", "FlowPolicy", "check_spaces"]
