"""collect_dataset: D4RL rows that replay the env exactly, with terminals and timeouts apart."""

import gymnasium as gym
import numpy as np
import pytest

from flowrl.data import collect_dataset, random_policy
from flowrl.data.datasets import OfflineDataset


def test_rows_replay_the_env_and_flags_split_terminal_from_timeout():
    env = gym.make("Pendulum-v1", max_episode_steps=50)  # never terminates, always times out
    out = collect_dataset(env, random_policy(env.action_space, seed=1), 120, seed=3)
    data = out.dataset
    assert isinstance(data, OfflineDataset) and len(data) == 120
    assert not data.terminals.any()
    # 50-step episodes: rows 49 and 99 time out, and the cut-short last row is marked too.
    assert np.flatnonzero(data.timeouts).tolist() == [49, 99, 119]
    assert out.episode_lengths.tolist() == [50, 50]
    inside = ~data.timeouts[:-1]
    np.testing.assert_array_equal(
        data.next_observations[:-1][inside], data.observations[1:][inside]
    )
    # Replaying the recorded actions from the same seed gives the same rewards.
    replay = gym.make("Pendulum-v1", max_episode_steps=50)
    obs, _ = replay.reset(seed=3)
    np.testing.assert_allclose(obs, data.observations[0], rtol=1e-6)
    for i in range(49):
        obs, reward, *_ = replay.step(data.actions[i])
        assert reward == pytest.approx(float(data.rewards[i]), rel=1e-5)
    np.testing.assert_allclose(out.episode_returns[0], data.rewards[:50].sum(), rtol=1e-5)


def test_terminal_steps_are_terminals_and_collection_is_reproducible():
    env = gym.make("MountainCarContinuous-v0", max_episode_steps=30)
    push_right = lambda obs: np.array([1.0])  # noqa: E731
    a = collect_dataset(env, push_right, 70, seed=0).dataset
    b = collect_dataset(env, push_right, 70, seed=0).dataset
    np.testing.assert_array_equal(a.observations, b.observations)
    assert not (a.terminals & a.timeouts).any()

    hopper = gym.make("Hopper-v5")
    falls = collect_dataset(hopper, random_policy(hopper.action_space), 200, seed=0)
    assert falls.dataset.terminals.any()  # random Hopper falls within a few dozen steps
    assert falls.summary()["episodes"] == int(falls.dataset.terminals.sum())


def test_sb3_predictors_are_used_and_actions_clipped():
    class Wild:
        def __init__(self):
            self.calls = []

        def predict(self, obs, deterministic=False):
            self.calls.append(deterministic)
            return np.array([5.0]), None

    env = gym.make("Pendulum-v1")
    wild = Wild()
    data = collect_dataset(env, wild, 10, deterministic=True).dataset
    assert wild.calls == [True] * 10
    assert (data.actions == env.action_space.high).all()


def test_bad_input_is_refused():
    env = gym.make("Pendulum-v1")
    with pytest.raises(ValueError, match="num_transitions"):
        collect_dataset(env, random_policy(env.action_space), 0)
    with pytest.raises(ValueError, match="shape"):
        collect_dataset(env, lambda obs: np.zeros(3), 5)
    with pytest.raises(ValueError, match="Box action"):
        collect_dataset(gym.make("CartPole-v1"), lambda obs: 0, 5)
    with pytest.raises(TypeError, match="predict"):
        collect_dataset(env, 42, 5)
