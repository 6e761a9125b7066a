"""Learners on MJX envs: ReinFlow through the torch face, and the Hydra ``env=mjx/*`` configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv

from flowrl.algos import ReinFlow
from flowrl.algos.reinflow import torch_face
from flowrl.envs.mjx import MJXVecEnv, make_task
from flowrl.experiments import train

E = 8  # the same batch as test_bridge: its compiled functions come from the cache


def test_reinflow_uses_the_torch_face_and_learns(tmp_path):
    torch.manual_seed(0)
    env = MJXVecEnv(make_task("InvertedPendulum"), E, seed=0)
    assert torch_face(env) is env.torch
    calls = {"torch": 0}
    step = env.torch.step

    def counting_step(actions):
        assert isinstance(actions, torch.Tensor)
        calls["torch"] += 1
        return step(actions)

    env.torch.step = counting_step  # type: ignore[method-assign]
    model = ReinFlow("FlowPolicy", env, n_steps=128, batch_size=256, n_epochs=5, seed=0)
    before, _ = evaluate_policy(model, env, n_eval_episodes=E, deterministic=True)
    model.learn(E * 128 * 12)
    after, _ = evaluate_policy(model, env, n_eval_episodes=E, deterministic=True)
    assert calls["torch"] == 12 * 128, "every rollout step must go through the torch face"
    assert len(model.ep_info_buffer) > 0
    print(f"ReinFlow on MJX InvertedPendulum: {before:.1f} -> {after:.1f}")
    assert after > max(2 * before, 50.0), (before, after)
    # The env's tensors are rollout state, not checkpoint content: save -> load round-trips.
    model.save(tmp_path / "reinflow_mjx.zip")
    loaded = ReinFlow.load(tmp_path / "reinflow_mjx.zip", env=env)
    assert not hasattr(loaded, "_torch_obs")
    obs = env.reset()
    np.testing.assert_array_equal(
        model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0]
    )


def test_wrapped_env_keeps_the_numpy_path():
    from stable_baselines3.common.vec_env import VecNormalize

    env = MJXVecEnv(make_task("InvertedPendulum"), E, seed=0)
    assert torch_face(VecNormalize(env)) is None  # normalization must not be bypassed


@pytest.mark.parametrize("name", ["hopper", "walker2d", "halfcheetah", "ant", "inverted_pendulum"])
def test_mjx_env_configs_compose(name):
    cfg = train.compose_config(f"env=mjx/{name}")
    assert cfg.env.vec_env == "mjx" and cfg.env.eval_id.endswith("-v5")
    eval_env = train.make_vec_env_from_config(cfg.env, 1, training=False)
    assert isinstance(eval_env, DummyVecEnv)  # evaluation runs on the classic task
    assert eval_env.envs[0].spec.id == cfg.env.eval_id
    eval_env.close()


def test_mjx_config_trains_through_build_model():
    cfg = train.compose_config("env=mjx/inverted_pendulum", f"env.n_envs={E}")
    venv = train.make_vec_env_from_config(cfg.env, cfg.env.n_envs, cfg.seed, cfg.algo.gamma)
    assert isinstance(venv, MJXVecEnv) and venv.num_envs == E
    model = train.build_model(cfg, venv)
    action, _ = model.predict(venv.reset(), deterministic=True)
    assert action.shape == (E, 1) and np.all(np.abs(action) <= 3.0)
