"""flowrl.envs: environments for flowrl (installed from the repository's ``envs/`` folder).

Importing this package registers flowrl's gymnasium environments. Batched MJX environments
live in submodules that import jax on first use (``pip install "flowrl-policies[mjx]"``).

Wrappers: :class:`flowrl.envs.wrappers.ActionChunk` plays a chunk of Ta actions per step.

Registered ids:

- ``MultiGoal-v0``: :class:`flowrl.envs.multigoal.MultiGoalEnv`, the 2-D multi-goal task of
  Haarnoja et al. (2017), 30 steps per episode; ``num_goals=6`` (or any n >= 2) puts n goals
  evenly on a circle instead of the paper's four.
- ``flowrl/PointMaze-UMaze-v0``, ``flowrl/PointMaze-Medium-v0``, ``flowrl/PointMaze-Large-v0``:
  reward-free exploration of gymnasium-robotics' PointMaze from a fixed reset cell
  (:func:`flowrl.envs.maze.make_point_maze` with ``task="explore"``), 300 / 600 / 800 steps;
  observations ``[x, y, vx, vy]``, the position in ``info["xy"]`` (for
  :func:`flowrl.envs.maze.maze_coverage` and :class:`flowrl.callbacks.CoverageCallback`).
- ``flowrl/PointMazeGoal-UMaze-v0``, ``flowrl/PointMazeGoal-Medium-v0``,
  ``flowrl/PointMazeGoal-Large-v0``: the same mazes with ``task="goal"``: reach the fixed
  goal (the free cell farthest from the start); reward 1 and the end of the episode there,
  ``info["is_success"]`` at every step.

The PointMaze ids need gymnasium-robotics (``pip install "flowrl-policies[mazes]"``), imported
only when such an env is made; the maze layouts and the coverage metric work without it.
"""

import gymnasium

from .maze import (
    DEFAULT_EPISODE_STEPS,
    MAZE_NAMES,
    MazeLayout,
    make_point_maze,
    maze_coverage,
    maze_layout,
    plot_visits,
)
from .multigoal import GOALS, MultiGoalEnv, goal_coverage, goal_layout
from .wrappers import ActionChunk

__all__: list[str] = [
    "GOALS",
    "MAZE_NAMES",
    "ActionChunk",
    "MazeLayout",
    "MultiGoalEnv",
    "goal_coverage",
    "goal_layout",
    "make_point_maze",
    "maze_coverage",
    "maze_layout",
    "plot_visits",
]


def _register(env_id: str, entry_point: str, **kwargs) -> None:
    """Registers ``env_id`` unless it already is (re-imports and reloads stay silent)."""
    if env_id not in gymnasium.registry:
        gymnasium.register(id=env_id, entry_point=entry_point, **kwargs)


_register("MultiGoal-v0", "flowrl.envs.multigoal:MultiGoalEnv", max_episode_steps=30)

# The PointMaze ids: the entry point imports gymnasium-robotics only when an env is made.
_MAZE_ENTRY = "flowrl.envs.maze:registered_point_maze"
for _env_id, _maze, _task in (
    ("flowrl/PointMaze-UMaze-v0", "umaze", "explore"),
    ("flowrl/PointMaze-Medium-v0", "medium", "explore"),
    ("flowrl/PointMaze-Large-v0", "large", "explore"),
    ("flowrl/PointMazeGoal-UMaze-v0", "umaze", "goal"),
    ("flowrl/PointMazeGoal-Medium-v0", "medium", "goal"),
    ("flowrl/PointMazeGoal-Large-v0", "large", "goal"),
):
    _register(
        _env_id,
        _MAZE_ENTRY,
        max_episode_steps=DEFAULT_EPISODE_STEPS[_maze],
        kwargs={"maze": _maze, "task": _task},
    )
del _env_id, _maze, _task
