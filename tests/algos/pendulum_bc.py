"""A deliberately weak BC flow policy on Pendulum-v1, the start of the learning tests.

The BC data come from a crude swing-up controller with heavy action noise (mean return
about −600), and BC runs for only 300 steps, so the starting policy is poor (about −1000
deterministic, −1250 stochastic, measured).
"""

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

from flowrl.algos import BCConfig, FlowBC
from flowrl.data import OfflineDataset
from flowrl.policies import FlowActor


def _swing_up(obs: np.ndarray, rng: np.random.Generator, noise: float) -> float:
    """Bang-bang energy pumping far from upright, PD near it, plus Gaussian noise."""
    cos, sin, omega = obs
    if cos > 0.85:
        torque = -10.0 * np.arctan2(sin, cos) - 2.0 * omega
    else:
        torque = 2.0 * np.sign(omega) if abs(omega) > 0.1 else 1.0
    return float(np.clip(torque + noise * rng.normal(), -2.0, 2.0))


def _dataset(episodes: int = 20, noise: float = 1.0) -> OfflineDataset:
    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(0)
    obs_list, act_list = [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=episode)
        for _ in range(200):
            action = _swing_up(obs, rng, noise)
            obs_list.append(obs)
            act_list.append([action])
            obs, *_ = env.step([action])
    return OfflineDataset(
        observations=np.array(obs_list), actions=np.array(act_list, dtype=np.float32)
    )


def evaluate(model, deterministic: bool, episodes: int = 30) -> float:
    """Mean return over ``episodes`` episodes of a fixed evaluation env."""
    env = make_vec_env("Pendulum-v1", n_envs=1, seed=123)
    mean, _ = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=deterministic)
    return mean


def weak_bc_actor(actor_class: type[FlowActor] = FlowActor) -> FlowActor:
    """The BC actor (EMA weights) of 300 steps on the noisy swing-up data, seed 0.

    ``actor_class``: :class:`FlowActor` (flow matching) or ``DiffusionActor`` (the DDPM
    noise-prediction loss, for DPPO); the same data, net and steps.
    """
    torch.manual_seed(0)
    bc = FlowBC.from_dataset(
        _dataset(),
        env=gym.make("Pendulum-v1"),
        actor_config={"width": 64, "depth": 2, "num_steps": 4},
        config=BCConfig(steps=300, batch_size=256, seed=0),
        actor_class=actor_class,
    )
    bc.learn(progress_bar=False)
    return bc.actor_ema


def pendulum_venv() -> VecNormalize:
    """4 Pendulum envs with normalized rewards (observations are normalized in the policy)."""
    venv = make_vec_env("Pendulum-v1", n_envs=4, seed=0)
    return VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=0.95)


def improvement(model, steps: int, episodes: int = 30) -> dict[bool, float]:
    """Train ``model`` for ``steps``; the change of the return, keyed by ``deterministic``."""
    before = {d: evaluate(model, d, episodes) for d in (True, False)}
    model.learn(steps)
    after = {d: evaluate(model, d, episodes) for d in (True, False)}
    print(
        f"deterministic {before[True]:.0f} -> {after[True]:.0f}, "
        f"stochastic {before[False]:.0f} -> {after[False]:.0f}"
    )
    return {d: after[d] - before[d] for d in (True, False)}
