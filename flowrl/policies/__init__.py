"""Policies: flow actors with their normalizers (the SB3 policy classes wrap these)."""

from flowrl.policies.flow_actor import FlowActor, FlowActorConfig

__all__ = ["FlowActor", "FlowActorConfig"]
