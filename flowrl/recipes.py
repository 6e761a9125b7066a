"""Ready-made ReinFlow settings: flowrl's measured MuJoCo recipe and the ReinFlow paper's.

Each preset returns the keyword arguments of :class:`~flowrl.algos.ReinFlow` (its
``policy_kwargs`` included), so one call sets everything and any of it can be overridden::

    from stable_baselines3.common.env_util import make_vec_env
    from flowrl import ReinFlow, recipes

    env = make_vec_env("Hopper-v5", n_envs=recipes.REINFLOW_MUJOCO_N_ENVS)
    model = ReinFlow("FlowPolicy", env, **recipes.reinflow_mujoco(pretrained="bc.pt", gamma=0.995))
    model.learn(1_000_000)

The Hydra side has the same presets as ``+recipe=reinflow_mujoco`` and ``+recipe=reinflow_paper``
(``configs/recipe/``); a test keeps each yaml equal to its function here. The library's own
defaults (``FlowPolicy``'s σ ∈ [0.10, 0.24], ``ReinFlow``'s PPO settings) stay as they are:
these presets are opt-in, so runs and checkpoints made with the defaults are unchanged.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from flowrl.algos.reinflow import PAPER_LOG_PROB_BOUNDS

__all__ = [
    "PAPER_LOG_PROB_BOUNDS",
    "REINFLOW_MUJOCO_N_ENVS",
    "REINFLOW_PAPER_ACTION_CHUNK",
    "REINFLOW_PAPER_N_ENVS",
    "reinflow_mujoco",
    "reinflow_paper",
]

# ---------------------------------------------------------------------- flowrl's measured recipe

REINFLOW_MUJOCO_N_ENVS = 4  # n_steps = 512 per env: 2048 env steps per update
_MUJOCO_POLICY: dict[str, Any] = {"sigma_min": 0.05, "sigma_max": 0.12}
_MUJOCO_ALGO: dict[str, Any] = {
    "n_steps": 512,
    "batch_size": 512,
    "n_epochs": 5,
    "learning_rate": 1.0e-4,
    "target_kl": 0.01,
    "critic_warmup_updates": 5,
}

# ---------------------------------------------------------------------- the ReinFlow paper's

# The official code's Hopper fine-tuning config (cfg/gym/finetune/hopper-v2/
# ft_ppo_reflow_mlp.yaml), mapped to flowrl's names; docs/reinflow_paper_settings.md gives
# each value's source line and what does not map one to one.
REINFLOW_PAPER_N_ENVS = 40
REINFLOW_PAPER_ACTION_CHUNK = 4  # horizon_steps = act_steps = 4 (flowrl.envs.ActionChunk)
_PAPER_SIGMA = (0.10, 0.24)  # min_std, max_std
_PAPER_POLICY: dict[str, Any] = {
    "num_steps": 4,  # denoising_steps = ft_denoising_steps
    "initial_std": 1.0,  # a⁰ ~ N(0, I), counted in the likelihood
    "sigma_min": _PAPER_SIGMA[0],
    "sigma_max": _PAPER_SIGMA[1],
    "noise_hidden": (64, 64),  # noise_hidden_dims
    "value_hidden": (256, 256, 256),  # critic mlp_dims
}
_PAPER_ALGO: dict[str, Any] = {
    "log_prob_reduction": "paper",
    "n_steps": 500,
    # 40 envs x 500 steps = 20000 samples; the official code repeats them 10 times and draws
    # minibatches of 50000, i.e. 4 minibatch steps per epoch: 20000 / 4 here.
    "batch_size": 5000,
    "n_epochs": 5,  # update_epochs
    "learning_rate": 4.5e-5,  # actor_lr (cosine warm restarts in the paper: see the doc)
    "critic_learning_rate": 6.5e-4,  # critic_lr
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "clip_range": 0.01,  # clip_ploss_coef
    "ent_coef": 0.03,
    "vf_coef": 0.5,
    # The official code stops at approx. KL > target_kl = 1.0, flowrl at KL > 1.5 target_kl.
    "target_kl": 1.0 / 1.5,
    "max_grad_norm": float("inf"),  # no max_grad_norm in the config: no clipping
    "critic_warmup_updates": 0,  # n_critic_warmup_itr
    "normalize_advantage": True,
    # learn_decay: max_std held for 35 % of training, then cosine to
    # 0.3 min_std + 0.7 max_std = 0.198 (max_noise_hold_ratio, max_noise_decay_ratio)
    "sigma_max_final": 0.198,
    "sigma_hold_fraction": 0.35,
}


def _preset(
    policy: dict[str, Any],
    algo: dict[str, Any],
    pretrained: str | os.PathLike[str] | Any | None,
    policy_kwargs: dict[str, Any] | None,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """ReinFlow's keyword arguments: the preset's, then the caller's on top."""
    kwargs = copy.deepcopy(algo)
    kwargs.update(overrides)
    merged = copy.deepcopy(policy)
    if pretrained is not None:
        merged["pretrained"] = pretrained
    merged.update(policy_kwargs or {})
    kwargs["policy_kwargs"] = merged
    return kwargs


def reinflow_mujoco(
    *,
    gamma: float = 0.999,
    gae_lambda: float = 0.99,
    pretrained: str | os.PathLike[str] | Any | None = None,
    policy_kwargs: dict[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The measured ReinFlow recipe for gymnasium MuJoCo (``+recipe=reinflow_mujoco``).

    σ ∈ [0.05, 0.12] (half of ``FlowPolicy``'s defaults: the K = 4 chain's stochastic return
    then stays near the deterministic one that is evaluated), learning rate 1e-4, target KL
    0.01, five critic-only updates first, 2048 env steps per update on
    :data:`REINFLOW_MUJOCO_N_ENVS` envs. The README's Hopper-v5 tables measure it.

    Args:
        gamma: Discount, a per-task choice: 0.999 (the recipe's, its seed table on Hopper),
            0.995 (Hopper-v5 at 1M steps, ``experiment=hopper_medium_1m``), 0.99 with
            ``gae_lambda=0.95`` on Walker2d-v5 (0.999 taught it to stand still).
        gae_lambda: GAE λ.
        pretrained: The BC actor (a ``FlowActor`` or its checkpoint path) to fine-tune.
        policy_kwargs: More ``FlowPolicy`` arguments, applied over the recipe's.
        **overrides: Any other ``ReinFlow`` argument, applied over the recipe's.

    Returns:
        ``ReinFlow``'s keyword arguments, ``policy_kwargs`` included.
    """
    algo = {**_MUJOCO_ALGO, "gamma": gamma, "gae_lambda": gae_lambda}
    return _preset(_MUJOCO_POLICY, algo, pretrained, policy_kwargs, overrides)


def reinflow_paper(
    *,
    pretrained: str | os.PathLike[str] | Any | None = None,
    policy_kwargs: dict[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The ReinFlow paper's Hopper settings in flowrl's terms (``+recipe=reinflow_paper``).

    The official implementation's log-probability (``log_prob_reduction="paper"``: the mean
    over the (K+1)·Ta·Da Gaussian terms, a⁰ ~ N(0, I) included, clamped to
    :data:`PAPER_LOG_PROB_BOUNDS`) with the clip range 0.01, entropy coefficient 0.03 and
    learning rates tuned for it, K = 4, σ ∈ [0.10, 0.24] with its hold-then-cosine σ_max
    decay, on :data:`REINFLOW_PAPER_N_ENVS` envs acting in chunks of
    :data:`REINFLOW_PAPER_ACTION_CHUNK` (wrap the env in ``flowrl.envs.ActionChunk`` and
    pretrain the actor on chunks). ``docs/reinflow_paper_settings.md`` maps every
    hyperparameter to its source and lists what flowrl does not reproduce (the learning
    rates' warm restarts, the clamps inside the sampler).

    Args:
        pretrained: The BC actor (a ``FlowActor`` or its checkpoint path) to fine-tune.
        policy_kwargs: More ``FlowPolicy`` arguments, applied over the preset's.
        **overrides: Any other ``ReinFlow`` argument, applied over the preset's.

    Returns:
        ``ReinFlow``'s keyword arguments, ``policy_kwargs`` included.
    """
    return _preset(_PAPER_POLICY, _PAPER_ALGO, pretrained, policy_kwargs, overrides)
