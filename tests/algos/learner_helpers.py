"""Helpers of the on-policy learner tests: one rollout, one update, states, a small actor,
and ``LEARNERS``, the table of every on-policy learner that the shared tests (here and in
``tests/reliability``) run for: a new learner joins every one of them by adding a row."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.monitor import Monitor
from torch import nn

from flowrl.algos import DPPO, FPO, NFT, OnPolicyCore, PolicyFlow, ReinFlow
from flowrl.data import Normalizer
from flowrl.policies import (
    DiffusionPolicy,
    FlowActor,
    FlowActorConfig,
    FlowPolicy,
    FPOPolicy,
    PolicyFlowPolicy,
)


def short_pendulum(steps: int = 16) -> Monitor:
    """Pendulum with short episodes, so that episode statistics appear within a few rollouts."""
    return Monitor(gym.make("Pendulum-v1", max_episode_steps=steps))


def rollout(model) -> None:
    """What SB3's learn does before an update: set up, then fill the buffer once."""
    _, callback = model._setup_learn(model.n_steps * model.n_envs, None)
    callback.on_training_start(locals(), globals())
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)


def update(model) -> dict:
    """One rollout and one update; the scalars the update recorded."""
    rollout(model)
    model.train()
    return dict(model.logger.name_to_value)


def state(module: nn.Module) -> dict:
    """A detached copy of a module's state dict."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(a: dict, b: dict) -> None:
    """Every tensor of two state dicts is equal."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def pendulum_actor(
    seed: int = 0,
    *,
    actor_class: type[FlowActor] = FlowActor,
    num_steps: int = 2,
    output_std: float = 0.3,
    gaussian_obs: bool = True,
) -> FlowActor:
    """A 'pretrained' actor for Pendulum: random non-zero output layer, box action normalizer.

    ``actor_class`` may be :class:`DiffusionActor` (an ε-net on the same network);
    ``gaussian_obs=False`` gives an identity observation normalizer.
    """
    torch.manual_seed(seed)
    env = gym.make("Pendulum-v1")
    env.observation_space.seed(seed)  # the normalizer's samples: the same actor in every run
    obs_normalizer = (
        Normalizer.gaussian(np.stack([env.observation_space.sample() for _ in range(64)]))
        if gaussian_obs
        else Normalizer.identity(3)
    )
    actor = actor_class(
        FlowActorConfig(obs_dim=3, action_dim=1, width=32, depth=1, num_steps=num_steps),
        obs_normalizer,
        Normalizer.box(env.action_space.low, env.action_space.high),
    )
    with torch.no_grad():
        nn.init.normal_(actor.velocity_net.output.weight, std=output_std)
        nn.init.normal_(actor.velocity_net.output.bias, std=output_std)
    return actor


# ---------------------------------------------------------------------- every learner


@dataclass(frozen=True)
class Learner:
    """How the tests build one learner."""

    cls: type[OnPolicyCore]
    alias: str
    policy_cls: type
    policy_kwargs: Callable[[int], dict[str, Any]]
    algo_kwargs: dict[str, Any] = field(default_factory=dict)
    # The policy takes sigma_min/sigma_max (FPOPolicy has no noise model: only a⁰ is random).
    noise_bounds: bool = True


LEARNERS = {
    "dppo": Learner(
        DPPO,
        "DiffusionPolicy",
        DiffusionPolicy,
        lambda K: dict(num_steps=K, actor_config=dict(width=32, depth=1), value_hidden=(32,)),
    ),
    "reinflow": Learner(
        ReinFlow,
        "FlowPolicy",
        FlowPolicy,
        lambda K: dict(
            num_steps=K,
            actor_config=dict(width=32, depth=1),
            noise_hidden=(16,),
            value_hidden=(32,),
        ),
    ),
    "policyflow": Learner(
        PolicyFlow,
        "PolicyFlowPolicy",
        PolicyFlowPolicy,
        lambda K: dict(num_steps=K, actor_config=dict(width=32, depth=1), value_hidden=(32,)),
        dict(num_ratio_times=4),
    ),
    "policyflow_grid": Learner(
        PolicyFlow,
        "PolicyFlowPolicy",
        PolicyFlowPolicy,
        lambda K: dict(num_steps=K, actor_config=dict(width=32, depth=1), value_hidden=(32,)),
        dict(ratio_estimator="grid"),
    ),
    "fpo": Learner(
        FPO,
        "FPOPolicy",
        FPOPolicy,
        lambda K: dict(num_steps=K, actor_config=dict(width=32, depth=1), value_hidden=(32,)),
        dict(num_mc=4),
        noise_bounds=False,
    ),
    "fpo_pp": Learner(
        FPO,
        "FPOPolicy",
        FPOPolicy,
        lambda K: dict(num_steps=K, actor_config=dict(width=32, depth=1), value_hidden=(32,)),
        dict(num_mc=4, variant="fpo++"),
        noise_bounds=False,
    ),
    "nft": Learner(
        NFT,
        "FPOPolicy",
        FPOPolicy,
        lambda K: dict(num_steps=K, actor_config=dict(width=32, depth=1), value_hidden=(32,)),
        dict(num_mc=4),
        noise_bounds=False,
    ),
}
