"""DPPO learns: fine-tuning a deliberately weak BC diffusion policy improves its return.

The start is built as ReinFlow's learning test builds its flow (``pendulum_bc``): the same
noisy swing-up data (mean return about −600) and only 300 BC steps, here with the
ε-prediction loss of a :class:`~flowrl.policies.DiffusionActor` (K = 4 DDPM steps).

Measured (``OMP_NUM_THREADS=1 .venv/bin/python -m pytest -s
tests/algos/test_dppo_learning.py``: 30k env steps, the 15-episode evaluations below; 72 s
of CPU on one core, about 40 % of it the four evaluations), DPPO seed 0 (this test):
deterministic −1314 → −359, stochastic −1296 → −233. Seeds 1/2/3 with the same BC start:
deterministic → −278 / −266 / −263, stochastic −1311 / −1319 / −1284 → −275 / −359 / −301,
so the gains lie between +955 and +1063 over 4 seeds. The test asks for +400 in both modes.
"""

import gymnasium as gym
import torch
from pendulum_bc import _dataset, pendulum_venv
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from flowrl.algos import DPPO, BCConfig, FlowBC
from flowrl.policies import DiffusionActor, DiffusionPolicy


def weak_bc_diffusion_actor() -> DiffusionActor:
    """The BC ε-net (EMA weights) of 300 steps on the noisy swing-up data, seed 0."""
    torch.manual_seed(0)
    bc = FlowBC.from_dataset(
        _dataset(),
        env=gym.make("Pendulum-v1"),
        actor_config={"width": 64, "depth": 2, "num_steps": 4},
        config=BCConfig(steps=300, batch_size=256, seed=0),
        actor_class=DiffusionActor,
    )
    bc.learn(progress_bar=False)
    return bc.actor_ema


def evaluate(model, deterministic: bool) -> float:
    """Mean return over 15 episodes of a fixed evaluation env (half of pendulum_bc's 30:
    a K-step diffusion chain per action makes evaluation the larger half of this test)."""
    env = make_vec_env("Pendulum-v1", n_envs=1, seed=123)
    mean, _ = evaluate_policy(model, env, n_eval_episodes=15, deterministic=deterministic)
    return mean


def test_dppo_improves_a_weak_bc_diffusion_policy_on_pendulum():
    venv = pendulum_venv()
    policy = DiffusionPolicy.from_pretrained(
        weak_bc_diffusion_actor(), venv.observation_space, venv.action_space, value_hidden=(64, 64)
    )
    model = DPPO(policy, venv, n_steps=256, batch_size=256, n_epochs=10, gamma=0.95, seed=0)
    before = {d: evaluate(model, d) for d in (True, False)}
    model.learn(30_000)
    after = {d: evaluate(model, d) for d in (True, False)}
    print(
        f"deterministic {before[True]:.0f} -> {after[True]:.0f}, "
        f"stochastic {before[False]:.0f} -> {after[False]:.0f}"
    )
    assert after[True] - before[True] > 400
    assert after[False] - before[False] > 400
    assert model.logger.name_to_value["flow/ratio_first_minibatch_max_deviation"] == 0.0
