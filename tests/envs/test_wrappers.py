"""flowrl.envs.ActionChunk: a chunk of H actions plays exactly like H single steps."""

import gymnasium as gym
import numpy as np
import pytest

from flowrl.envs import ActionChunk


def test_a_chunk_equals_its_steps_played_one_by_one():
    rng = np.random.default_rng(0)
    single = gym.make("Pendulum-v1")
    chunked = ActionChunk(gym.make("Pendulum-v1"), 3)
    assert chunked.action_space.shape == (3,)
    np.testing.assert_array_equal(chunked.action_space.low, [-2.0] * 3)
    obs_a, _ = single.reset(seed=7)
    obs_b, _ = chunked.reset(seed=7)
    np.testing.assert_array_equal(obs_a, obs_b)
    for _ in range(4):
        chunk = rng.uniform(-2, 2, size=3).astype(np.float32)
        total = 0.0
        for action in chunk:
            obs_a, reward, *_ = single.step(action[None])
            total += reward
        obs_b, reward_b, terminated, truncated, info = chunked.step(chunk)
        np.testing.assert_allclose(obs_b, obs_a, rtol=0, atol=0)
        assert reward_b == pytest.approx(total, rel=1e-12)
        assert info["env_steps"] == 3 and not (terminated or truncated)


def test_the_rest_of_a_chunk_is_dropped_at_the_episode_end():
    env = ActionChunk(gym.make("Pendulum-v1", max_episode_steps=5), 4)
    env.reset(seed=0)
    *_, truncated, info = env.step(np.zeros(4, np.float32))
    assert info["env_steps"] == 4 and not truncated
    *_, truncated, info = env.step(np.zeros(4, np.float32))
    assert info["env_steps"] == 1 and truncated  # step 5 of 5 ends it


def test_speed_is_averaged_over_the_chunk():
    single, chunked = gym.make("Hopper-v5"), ActionChunk(gym.make("Hopper-v5"), 2)
    single.reset(seed=1)
    chunked.reset(seed=1)
    actions = np.random.default_rng(1).uniform(-1, 1, size=(2, 3))
    speeds = [single.step(a)[4]["x_velocity"] for a in actions]
    info = chunked.step(actions.reshape(-1))[4]
    assert info["x_velocity"] == pytest.approx(np.mean(speeds))


def test_bad_chunks_and_spaces_are_refused():
    with pytest.raises(ValueError, match="chunk must be an integer >= 1"):
        ActionChunk(gym.make("Pendulum-v1"), 0)
    with pytest.raises(ValueError, match="1-D Box action space"):
        ActionChunk(gym.make("CartPole-v1"), 2)
    with pytest.raises(ValueError, match=r"expects 2 actions of 1 dims.*got shape \(3,\)"):
        ActionChunk(gym.make("Pendulum-v1"), 2).step(np.zeros(3))
