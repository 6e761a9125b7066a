"""ReinFlow learns: fine-tuning a deliberately weak BC flow policy improves its return.

The BC data come from a crude swing-up controller with heavy action noise (mean return
about −600), and BC runs for only 300 steps, so the starting policy is poor (about −1000
deterministic, −1250 stochastic, measured). 60k env steps of ReinFlow (~30 s on 2 cores)
brought it to about −250 in the runs we measured; the test asks for +300.
"""

import gymnasium as gym
import numpy as np
import pytest
import torch
from pendulum_bc import improvement, pendulum_venv, weak_bc_actor
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

from flowrl.algos import BCConfig, FlowBC, ReinFlow
from flowrl.data import OfflineDataset
from flowrl.policies import FlowPolicy


@pytest.mark.parametrize(
    "seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)]
)
def test_reinflow_improves_a_weak_bc_policy_on_pendulum(seed):
    bc = weak_bc_actor()
    venv = pendulum_venv()
    policy = FlowPolicy.from_pretrained(
        bc,
        venv.observation_space,
        venv.action_space,
        noise_hidden=(32, 32),
        value_hidden=(64, 64),
    )
    model = ReinFlow(policy, venv, n_steps=256, batch_size=256, n_epochs=10, gamma=0.95, seed=seed)
    change = improvement(model, 60_000)
    assert change[True] > 300
    assert change[False] > 300
    assert model.logger.name_to_value["flow/ratio_first_minibatch_max_deviation"] == 0.0


@pytest.fixture(scope="module")
def hopper_bc_actor():
    """Hopper-v5: a PPO teacher (300k steps) makes 50k stochastic transitions; BC imitates."""
    from stable_baselines3 import PPO

    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher = PPO("MlpPolicy", make_vec_env("Hopper-v5", n_envs=4, seed=0), seed=0)
    teacher.learn(300_000)
    env = gym.make("Hopper-v5")
    obs_list, act_list = [], []
    obs, _ = env.reset(seed=0)
    while len(obs_list) < 50_000:
        action, _ = teacher.predict(obs, deterministic=False)
        obs_list.append(obs)
        act_list.append(action)
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()
    data = OfflineDataset(observations=np.array(obs_list), actions=np.array(act_list))
    bc = FlowBC.from_dataset(
        data,
        env=env,
        actor_config={"width": 256, "depth": 2, "num_steps": 4},
        config=BCConfig(steps=5000, batch_size=256, seed=0),
    )
    bc.learn(progress_bar=False)
    return bc.actor_ema


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reinflow_improves_bc_on_hopper(hopper_bc_actor, seed):
    """ReinFlow (300k steps) improves the deterministic return of the BC flow on Hopper-v5."""
    venv = VecNormalize(make_vec_env("Hopper-v5", n_envs=4, seed=1), norm_obs=False)
    # Chains start at a⁰ = 0 (FlowPolicy's default initial_std): PPO improves the path the
    # deterministic evaluation follows. A critic warm-up before the actor moves and a KL
    # stop keep the good start from being wrecked early.
    model = ReinFlow(
        FlowPolicy.from_pretrained(hopper_bc_actor, venv.observation_space, venv.action_space),
        venv,
        n_steps=512,
        batch_size=512,
        n_epochs=5,
        learning_rate=3e-4,
        critic_warmup_updates=5,
        target_kl=0.03,
        seed=seed,
    )

    def evaluate(deterministic=True):
        env = make_vec_env("Hopper-v5", n_envs=1, seed=7)
        return evaluate_policy(model, env, n_eval_episodes=10, deterministic=deterministic)[0]

    before, before_stochastic = evaluate(), evaluate(False)
    model.learn(300_000)
    after, after_stochastic = evaluate(), evaluate(False)
    print(
        f"Hopper-v5 seed {seed}: BC {before:.0f} -> ReinFlow {after:.0f} (deterministic), "
        f"{before_stochastic:.0f} -> {after_stochastic:.0f} (stochastic); "
        f"training ep_rew_mean {model.logger.name_to_value.get('rollout/ep_rew_mean')}"
    )
    # Runs of this pipeline with these settings (seeds 0, 1, 2) went 1178 -> 1591, 3233,
    # 3113; the margin guards against evaluation noise (episode std ~100-300).
    assert after > before + 200
