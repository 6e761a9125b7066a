"""The MJX bridge: SB3 VecEnv contract, auto-reset, DLPack, seeding, and a learner on it."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv

from flowrl.envs.mjx import MJXVecEnv, make_task
from flowrl.envs.mjx.bridge import jax_to_torch, torch_to_jax

E = 8


@pytest.fixture(scope="module")
def task():
    return make_task("InvertedPendulum")


@pytest.fixture(scope="module")
def env(task):
    # Built once per module: every MJXVecEnv compiles its batched reset and step.
    return MJXVecEnv(task, E, seed=0, max_episode_steps=5)


def test_vecenv_contract(env):
    assert isinstance(env, VecEnv)
    assert env.num_envs == E
    assert env.observation_space.shape == (4,) and env.observation_space.dtype == np.float32
    assert env.action_space.shape == (1,)
    np.testing.assert_allclose(env.action_space.low, -3.0)  # the actuator's ctrlrange
    obs = env.reset()
    assert obs.shape == (E, 4) and obs.dtype == np.float32 and obs.flags.writeable
    assert all(env.observation_space.contains(o) for o in obs)
    obs, rewards, dones, infos = env.step(np.zeros((E, 1), np.float32))
    assert obs.shape == (E, 4) and rewards.shape == (E,) and dones.shape == (E,)
    assert dones.dtype == bool and len(infos) == E and all(isinstance(i, dict) for i in infos)
    assert env.get_attr("gym_id") == ["InvertedPendulum-v5"] * E
    assert env.env_is_wrapped(object) == [False] * E
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros((E + 1, 1), np.float32))


def test_truncation_keeps_final_observation(env):
    # Zero force for 5 steps: the pole does not fall, the time limit (5) ends every episode.
    env.seed(1)
    obs = env.reset()
    torch_env = env.torch
    for t in range(5):
        obs, rewards, dones, infos = env.step(np.zeros((E, 1), np.float32))
        if t < 4:
            assert not dones.any()
    assert dones.all()
    for i, info in enumerate(infos):
        assert info["TimeLimit.truncated"] is True
        assert info["episode"]["l"] == 5 and info["episode"]["r"] == pytest.approx(5.0)
        final = info["terminal_observation"]
        assert not np.allclose(final, obs[i]), "the next obs must come from a fresh reset"
    # The torch face of the same envs reports the same semantics.
    torch_env.reset()
    for _ in range(5):
        obs_t, reward_t, term_t, trunc_t, info_t = torch_env.step(torch.zeros(E, 1))
    assert trunc_t.all() and not term_t.any() and info_t["done"].all()
    assert (info_t["episode_length"] == 5).all()
    assert not torch.allclose(info_t["final_observation"], obs_t)


def test_termination_is_not_truncation(task):
    env = MJXVecEnv(task, E, seed=0, max_episode_steps=1000)
    env.reset()
    ended = {}
    for _ in range(50):  # full force tips the pole past 0.2 rad within a few steps
        obs, rewards, dones, infos = env.step(np.full((E, 1), 3.0, np.float32))
        for i in np.flatnonzero(dones):
            ended.setdefault(i, (infos[i], obs[i], rewards[i]))
    assert len(ended) == E
    for info, next_obs, reward in ended.values():
        assert info["TimeLimit.truncated"] is False
        assert abs(info["terminal_observation"][1]) > 0.2  # the terminal state is kept
        assert np.abs(next_obs).max() < 0.05  # and the env restarted near upright
        assert reward == 0.0  # InvertedPendulum-v5 pays 0 on the terminating step
        assert info["episode"]["r"] == info["episode"]["l"] - 1


def test_seeding_is_reproducible(task):
    a = MJXVecEnv(task, E, seed=3, max_episode_steps=5)
    b = MJXVecEnv(task, E, seed=3, max_episode_steps=5)
    c = MJXVecEnv(task, E, seed=4, max_episode_steps=5)
    first_a, first_b, first_c = a.reset(), b.reset(), c.reset()
    np.testing.assert_array_equal(first_a, first_b)
    assert not np.allclose(first_a, first_c)
    assert len({tuple(o) for o in first_a}) == E, "each env draws its own reset noise"
    actions = np.random.default_rng(0).uniform(-1, 1, (5, E, 1)).astype(np.float32)
    for act in actions:
        out_a, out_b = a.step(act), b.step(act)
        np.testing.assert_array_equal(out_a[0], out_b[0])
        np.testing.assert_array_equal(out_a[1], out_b[1])
    assert not np.allclose(a.reset(), first_a), "a second reset starts new episodes"
    a.seed(3)
    np.testing.assert_array_equal(a.reset(), first_a)


def test_dlpack_round_trip_shares_memory():
    x = jnp.arange(12, dtype=jnp.float32).reshape(3, 4) + 1
    t = jax_to_torch(x)
    assert t.data_ptr() == x.unsafe_buffer_pointer(), "JAX -> torch must not copy"
    np.testing.assert_array_equal(t.numpy(), np.asarray(x))
    u = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    y = torch_to_jax(u)
    assert y.unsafe_buffer_pointer() == u.data_ptr(), "torch -> JAX must not copy on CPU"
    np.testing.assert_array_equal(np.asarray(y), u.numpy())
    # The numpy route copies (what the DLPack route saves).
    assert jax_to_torch(x, "numpy").data_ptr() != x.unsafe_buffer_pointer()


def test_bad_arguments(task):
    with pytest.raises(ValueError, match="num_envs"):
        MJXVecEnv(task, 0)
    with pytest.raises(ValueError, match="transfer"):
        MJXVecEnv(task, 2, transfer="pickle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown MJX task"):
        make_task("Hoper")
    with pytest.raises(ValueError, match="cone"):
        make_task("Hopper", cone="round")
    with pytest.raises(RuntimeError, match="reset"):
        MJXVecEnv(task, 2).step(np.zeros((2, 1), np.float32))
    env = MJXVecEnv(task, E, seed=0)
    env.reset()
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.full((E, 1), np.nan, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        env.torch.step(torch.full((E, 1), float("inf")))


@pytest.mark.filterwarnings("ignore:Evaluation environment is not wrapped")
def test_ppo_learns_on_mjx_inverted_pendulum(task):
    # The bridge reports SB3's `episode` infos itself; a Monitor wrapper does not apply.
    torch.manual_seed(0)
    env = MJXVecEnv(task, 16, seed=0)
    model = PPO(
        "MlpPolicy", env, n_steps=64, batch_size=256, n_epochs=5, learning_rate=1e-3, seed=0
    )
    before, _ = evaluate_policy(model, env, n_eval_episodes=16, deterministic=True)
    model.learn(16 * 64 * 30)
    after, _ = evaluate_policy(model, env, n_eval_episodes=16, deterministic=True)
    assert len(model.ep_info_buffer) > 0, "SB3 must see the bridge's episode statistics"
    assert after > max(3 * before, 100.0), (before, after)
