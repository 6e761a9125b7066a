"""EDP explores PointMaze-UMaze better than uniform random actions (a learning test, < 1 min).

Both runs take 6000 reward-free env steps from the same start cell with the same seed; EDP
trains a SAC behaviour policy on the score intrinsic reward (one gradient step every 4 env
steps after 1000 uniform warm-up steps). The benchmark with more seeds, mazes and baselines
is experiments/benchmarks/maze_exploration.py (docs/edp.md).
"""

from __future__ import annotations

import gymnasium as gym
import pytest
from stable_baselines3 import SAC

from flowrl.algos import EDPExplore
from flowrl.algos.exploration import wrap_reward_free
from flowrl.callbacks import CoverageCallback

pytest.importorskip("gymnasium_robotics")

ENV = "flowrl/PointMaze-UMaze-v0"
STEPS = 6000
COMMON = dict(
    learning_starts=1000,
    batch_size=128,
    train_freq=4,
    policy_kwargs=dict(net_arch=[64, 64]),
)


def _coverage(model, steps: int) -> dict:
    callback = CoverageCallback("umaze", log_freq=1000)
    model.learn(steps, callback=callback)
    return callback.coverage()


def test_edp_covers_more_of_umaze_than_random_actions():
    import flowrl.envs  # noqa: F401  (registers the maze)

    edp = EDPExplore(
        "MlpPolicy",
        ENV,
        intrinsic_kwargs=dict(num_draws=8, width=64),
        actor_config=dict(width=64, depth=1, num_steps=4),
        seed=0,
        **COMMON,
    )
    random = SAC(
        "MlpPolicy",
        wrap_reward_free(gym.make(ENV)),
        seed=0,
        **{**COMMON, "learning_starts": STEPS + 1},  # uniform warm-up actions throughout
    )
    explored, baseline = _coverage(edp, STEPS), _coverage(random, STEPS)
    assert explored["cells"] > baseline["cells"], (explored, baseline)
    assert explored["entropy_normalized"] > baseline["entropy_normalized"]
