"""Learners: behaviour cloning now; SB3 on/off-policy algorithms build on the same actors."""

from flowrl.algos.bc import BCConfig, FlowBC

__all__ = ["BCConfig", "FlowBC"]
