"""flowrl.envs: environments for flowrl (installed from the repository's ``envs/`` folder).

Importing this package registers flowrl's gymnasium environments. Batched MJX environments
live in submodules that import jax on first use (``pip install "flowrl-policies[mjx]"``).

Wrappers: :class:`flowrl.envs.wrappers.ActionChunk` plays a chunk of Ta actions per step.

Registered ids:

- ``MultiGoal-v0``: :class:`flowrl.envs.multigoal.MultiGoalEnv`, the 2-D multi-goal task of
  Haarnoja et al. (2017), 30 steps per episode; ``num_goals=6`` (or any n >= 2) puts n goals
  evenly on a circle instead of the paper's four.
"""

import gymnasium

from .multigoal import GOALS, MultiGoalEnv, goal_coverage, goal_layout
from .wrappers import ActionChunk

__all__: list[str] = ["GOALS", "ActionChunk", "MultiGoalEnv", "goal_coverage", "goal_layout"]


def _register(env_id: str, entry_point: str, **kwargs) -> None:
    """Registers ``env_id`` unless it already is (re-imports and reloads stay silent)."""
    if env_id not in gymnasium.registry:
        gymnasium.register(id=env_id, entry_point=entry_point, **kwargs)


_register("MultiGoal-v0", "flowrl.envs.multigoal:MultiGoalEnv", max_episode_steps=30)
