"""The Playground adapter (needs the playground extra; skipped without it)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mujoco_playground", reason='needs: pip install "flowrl-policies[playground]"')

from flowrl.envs.mjx import MJXVecEnv, make_task  # noqa: E402


def test_cartpole_balance_through_the_bridge():
    task = make_task("playground/CartpoleBalance")
    assert task.observation_size == 5 and task.action_size == 1
    assert task.max_episode_steps == 1000
    env = MJXVecEnv(task, 4, seed=0, max_episode_steps=20)
    obs = env.reset()
    assert obs.shape == (4, 5) and obs.dtype == np.float32
    total = np.zeros(4)
    for _ in range(20):
        obs, rewards, dones, infos = env.step(np.zeros((4, 1), np.float32))
        total += rewards
        assert ((rewards >= 0) & (rewards <= 1)).all()
    # DM Control's balance task never terminates: the bridge's time limit truncates it.
    assert dones.all() and all(i["TimeLimit.truncated"] for i in infos)
    assert total.min() > 15  # an upright pole at rest pays nearly 1 per step
    np.testing.assert_allclose([i["episode"]["r"] for i in infos], total, rtol=1e-5)
