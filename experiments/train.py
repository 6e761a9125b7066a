"""Train one RL algorithm on one environment: the Hydra entry point of ``configs/train.yaml``.

    python experiments/train.py algo=reinflow env=pendulum
    python experiments/train.py algo=ppo env=hopper total_timesteps=1000000
    python experiments/train.py algo=reinflow env=hopper pretrained=<bc.pt>
    python experiments/train.py algo=reinflow env=hopper from_scratch=true
    python experiments/train.py experiment=pendulum_quick
    python experiments/train.py experiment=maze_edp      # explore, then EDP fine-tuning
    python experiments/train.py algo=ppo,reinflow,policyflow env=pendulum seed=0,1 -m

Config groups (``configs/<group>/<option>.yaml``, each checked against a dataclass below, so
a typo fails with the list of valid keys or options): ``algo`` (the learner and its
hyperparameters), ``policy`` (the policy network; every algo yaml picks its natural one),
``env`` (the gymnasium task), ``experiment`` (optional bundles that set several groups and
fields at once), ``recipe`` (bundles added with ``+recipe=…``); ``--help`` lists their options.
Every run writes to ``output_dir``, one folder per job (a multirun's too; its
``multirun.yaml`` alone goes to ``hydra.sweep.dir``):

* ``model.zip`` (SB3 checkpoint; ``vecnormalize.pkl`` too when rewards are normalized) and
  ``best_model.zip`` (the model at its best deterministic evaluation);
* ``curve.csv`` and ``curve.png``: returns of the deterministic and the stochastic policy
  on a separate eval env against env steps;
* ``results.json``: the resolved config, final returns, wall time, steps per second and the
  curve. A run whose ``results.json`` holds the same config is skipped, so re-running a
  sweep only does the missing runs;
* ``tb/``: TensorBoard logs; ``.hydra/`` (the job's config.yaml, overrides.yaml and
  hydra.yaml) and ``train.log``, Hydra's log of the job.

The same entry point runs the whole pipeline when ``stages`` asks for it, stages in the order
dataset, bc, explore, finetune (``experiments/pretrain.py``):

* ``stages=[dataset,bc,finetune]`` (e.g. ``experiment=pipeline_medium env=walker2d``): the
  dataset stage trains an SB3 teacher and records its rollouts, the bc stage behaviour-clones
  a flow actor on them (``bc/bc.pt``), and fine-tuning starts from that actor;
* ``stages=[explore,finetune]`` (e.g. ``experiment=maze_edp``, ``algo=edp``): the explore
  stage is EDP's reward-free pretraining (``explore.env_id``, e.g. a PointMaze without goal):
  a behaviour policy trained on an intrinsic reward collects data and a flow policy π_pre
  fitted to its actions (``explore/prior.pt``) is what fine-tuning starts from. It takes the
  place of bc (not both).

A flow policy fine-tuned without those stages starts from ``pretrained``; when that is unset
while ``<pretrain_dir>/bc/bc.pt`` (or ``explore/prior.pt``) exists, the run stops before it
starts: pass ``pretrained=<that path>`` to start from it, or ``from_scratch=true`` to train a
fresh actor on purpose. ``algo=edp`` needs a pretrained flow (or ``from_scratch=true``).
Other scripts import this file and call :func:`compose_config`,
:func:`make_vec_env_from_config`, :func:`build_model` and :func:`train`. Adding a learner
takes a schema dataclass here (decorated with ``@register_schema("algo", name)``) and a yaml
in ``configs/algo/``.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from difflib import get_close_matches
from importlib.resources import files
from pathlib import Path
from typing import Any

import gymnasium as gym
import hydra
import matplotlib
import numpy as np
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import MISSING, DictConfig, OmegaConf
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecNormalize

from flowrl import distributed
from flowrl.algos.on_policy import check_on_policy_args
from flowrl.callbacks import LearningCurveCallback
from flowrl.checkpoints import TrainingCheckpoint, sigterm_as_interrupt
from flowrl.data_parallel import rank_zero
from flowrl.envs import ActionChunk
from flowrl.experiments.pretrain import (
    BC_KINDS,
    BCStageConfig,
    DatasetStageConfig,
    ExploreStageConfig,
    behaviour_clone,
    check_explore,
    dataset_returns,
    differences,
    explore_pretrain,
    folder_lock,
    make_dataset,
)
from flowrl.optim import SCHEDULE_KINDS, make_schedule

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

# The configs: the package flowrl.configs (configs/ of a clone, or the installed copy).
CONFIG_MODULE = "flowrl.configs"
CONFIG_DIR = Path(str(files(CONFIG_MODULE)))
EVAL_SEED_OFFSET = 10_000  # the eval env's seed is seed + this, apart from the training envs
# Fields that change neither what is trained nor how: a finished run with other values of
# these is still the same run.
RESUME_IGNORED = (
    "output_dir",
    "progress_bar",
    "verbose",
    "checkpoint",
    "from_scratch",
    "distributed",  # how ranks talk: a torchrun job trains what one process of its envs does
)
STAGES = ("dataset", "bc", "explore", "finetune")
CHECKPOINT = "checkpoint.pt"  # an unfinished fine-tuning run's resumable state
PARTIAL_FILES = (
    f"{CHECKPOINT}.tmp",
    "model.partial.zip",
    "best_model.partial.zip",
    "vecnormalize.partial.pkl",
    "results.json.tmp",
)


def register_schema(group: str, name: str) -> Any:
    """Register a dataclass as the schema ``name`` of a group's yaml files.

    The yaml ``configs/<group>/<option>.yaml`` starts with ``defaults: [/schema/<group>@_here_:
    <name>, _self_]``, so its keys are checked against the dataclass. Schemas live in their
    own ``schema/`` groups so they do not show up among the options of ``algo=``, ``env=``….
    """

    def register(cls: type) -> type:
        ConfigStore.instance().store(group=f"schema/{group}", name=name, node=cls)
        return cls

    return register


# ---------------------------------------------------------------------- algorithms


@dataclass
class AlgoConfig:
    """Base of every learner's config: what to build and which policy kinds it accepts.

    Every field of a subclass that is not a field of this base is passed to the
    algorithm's constructor, as is ``gamma``.
    """

    _target_: str = MISSING  # the algorithm class, e.g. flowrl.algos.ReinFlow
    name: str = MISSING  # short name: output paths, TensorBoard run name
    policies: list[str] = field(default_factory=list)  # policy kinds it accepts (policy.kind)
    gamma: float = 0.99  # discount; also the discount of the reward normalizer

    def hyperparameters(self) -> dict[str, Any]:
        """Constructor arguments of the algorithm (everything but the base's bookkeeping)."""
        bookkeeping = {f.name for f in fields(AlgoConfig)} - {"gamma"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in bookkeeping}

    def pretrained_kwargs(self, pretrained: str | None) -> dict[str, Any]:
        """Constructor arguments that carry the BC checkpoint (none: it goes to the policy)."""
        return {}

    def needs_pretrained(self) -> bool:
        """Whether fine-tuning needs a pretrained actor unless ``from_scratch=true``."""
        return False


@dataclass
class OnPolicyConfig(AlgoConfig):
    """PPO's hyperparameters, shared by the on-policy learners (PPO, ReinFlow, …)."""

    learning_rate: float = 3e-4  # Adam learning rate (for ReinFlow: the actor's)
    n_steps: int = 2048  # steps per env per rollout
    batch_size: int = 64  # minibatch size
    n_epochs: int = 10  # passes over each rollout
    gae_lambda: float = 0.95  # GAE lambda
    clip_range: float = 0.2  # PPO ratio clip
    clip_range_vf: float | None = None  # value clip (null: off)
    normalize_advantage: bool = True  # standardise advantages per minibatch
    ent_coef: float = 0.0  # entropy bonus (for ReinFlow: of the chain's Gaussian steps)
    vf_coef: float = 0.5  # value-loss weight
    max_grad_norm: float = 0.5  # gradient clip (ReinFlow: actor and critic separately)
    target_kl: float | None = None  # stop an update's epochs at KL > 1.5 target_kl


@dataclass
class ScheduleConfig:
    """A learning-rate schedule over the run (``flowrl.optim.make_schedule``).

    E.g. ``algo.lr_schedule.kind=cosine algo.lr_schedule.final_fraction=0.1``: both learning
    rates fall from their configured values to a tenth of them by the end of training.
    """

    kind: str = "constant"  # constant, linear or cosine (of SB3's remaining progress)
    final_fraction: float = 0.0  # end value over start value (linear and cosine)

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(
                f"algo.lr_schedule.kind must be one of {', '.join(SCHEDULE_KINDS)}, got "
                f"{self.kind!r}"
            )
        if not self.final_fraction >= 0:
            raise ValueError(
                f"algo.lr_schedule.final_fraction must be >= 0, got {self.final_fraction}"
            )


@dataclass
class FlowOnPolicyConfig(OnPolicyConfig):
    """The on-policy core's options (``flowrl.algos.OnPolicyCore``), shared by its learners."""

    critic_learning_rate: float = 1e-3  # value net
    # schedule of learning_rate and critic_learning_rate (each from its own value)
    lr_schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    bc_coef: float = 0.0  # W2 regularizer towards the starting flow (0: off)
    critic_warmup_updates: int = 0  # first updates train the value net only
    critic_full_epochs: bool = False  # the value net trains all n_epochs past a target_kl stop
    log_ratio_clip: float | None = None  # clamp of the log-ratio (null: off)
    entropy_control: str | None = None  # null, clip_cov or kl_cov (arXiv 2505.22617)
    cov_fraction: float | None = None  # share of a minibatch it acts on (null: the paper's)
    clip_cov_bounds: list[float] = field(default_factory=lambda: [1.0, 5.0])  # Clip-Cov window
    kl_cov_coef: float = 1.0  # KL-Cov's beta
    ratio_check_tol: float = 1e-6  # max |ratio - 1| on an update's first minibatch
    sampler_check_tol: float = 1e-3  # max |log p| gap rollout vs re-scoring, per max(1, |log p|)
    # torch.compile of the policy's hot paths (rollout step, minibatch scoring); eager if off
    compile: bool = False
    compile_mode: str = "default"  # torch.compile mode; reduce-overhead adds CUDA graphs

    def hyperparameters(self) -> dict[str, Any]:
        """Constructor arguments; a non-constant ``lr_schedule`` makes both rates callables."""
        params = super().hyperparameters()
        mode = params.pop("compile_mode")
        params["compile"] = mode if params["compile"] else None
        schedule = params.pop("lr_schedule")
        if schedule.kind != "constant":  # floats otherwise: models as built before schedules
            for key in ("learning_rate", "critic_learning_rate"):
                params[key] = make_schedule(schedule.kind, params[key], schedule.final_fraction)
        return params


@register_schema("algo", "reinflow")
@dataclass
class ReinFlowConfig(FlowOnPolicyConfig):
    """ReinFlow (``flowrl.algos.ReinFlow``): PPO on the exact likelihood of a noisy flow chain."""

    _target_: str = "flowrl.algos.ReinFlow"
    name: str = "reinflow"
    policies: list[str] = field(default_factory=lambda: ["flow"])
    sigma_max_final: float | None = None  # sigma_max at the end (null: constant)
    sigma_hold_fraction: float = 0.5  # share of training sigma_max is held before decaying
    # "sum": exact chain likelihood; "mean": divided by K Da; "paper": the official code's
    # mean over the (K+1) Da Gaussian terms, clamped to [-1, 1] (+recipe=reinflow_paper)
    log_prob_reduction: str = "sum"


@register_schema("algo", "policyflow")
@dataclass
class PolicyFlowConfig(FlowOnPolicyConfig):
    """PolicyFlow (``flowrl.algos.PolicyFlow``): PPO on a velocity-difference ratio."""

    _target_: str = "flowrl.algos.PolicyFlow"
    name: str = "policyflow"
    policies: list[str] = field(default_factory=lambda: ["policyflow"])
    brownian_coef: float = 0.01  # w_b of the Brownian regularizer (ent_coef is w_g)
    num_ratio_times: int = 8  # J, times per sample of the paper's ratio estimate
    ratio_estimator: str = "paper"  # "paper" (J uniform times) or "grid" (THE K-step grid)


@register_schema("algo", "fpo")
@dataclass
class FPOConfig(FlowOnPolicyConfig):
    """FPO (``flowrl.algos.FPO``): PPO on flow-matching-loss ratios; ``variant=fpo++``."""

    _target_: str = "flowrl.algos.FPO"
    name: str = "fpo"
    policies: list[str] = field(default_factory=lambda: ["fpo"])
    clip_range: float = 0.05  # the FPO papers' epsilon
    variant: str = "fpo"  # "fpo" or "fpo++" (per-pair ratios + asymmetric trust region)
    per_pair_ratios: bool | None = None  # null: as variant says
    asymmetric_trust_region: bool | None = None  # null: as variant says
    num_mc: int = 8  # N_mc, (tau, eps) pairs per action
    cfm_reduction: str = "sum"  # "sum" over action dims (the paper's norm) or "mean"


@register_schema("algo", "nft")
@dataclass
class NFTConfig(FlowOnPolicyConfig):
    """NFT (``flowrl.algos.NFT``): DiffusionNFT's forward-process loss on rollout actions."""

    _target_: str = "flowrl.algos.NFT"
    name: str = "nft"
    policies: list[str] = field(default_factory=lambda: ["fpo"])
    learning_rate: float = 1e-3  # the library's NFT default (docs/nft.md)
    beta: float = 1.0  # trust region of the implicit positive/negative policies
    clip_max: float = 1.0  # normalized advantages clipped to +-c, r = A / 2c + 1/2
    num_mc: int = 8  # (tau, eps) pairs per action


@register_schema("algo", "dppo")
@dataclass
class DPPOConfig(FlowOnPolicyConfig):
    """DPPO (``flowrl.algos.DPPO``): PPO on every fine-tuned denoising step."""

    _target_: str = "flowrl.algos.DPPO"
    name: str = "dppo"
    policies: list[str] = field(default_factory=lambda: ["diffusion"])
    gamma_denoising: float = 0.99  # advantage discount per denoising step before the last
    # "sum": each step's exact log-likelihood; "paper": per-dim mean clamped to [-5, 2]
    log_prob_reduction: str = "sum"


@register_schema("algo", "ppo")
@dataclass
class PPOConfig(OnPolicyConfig):
    """Stable-Baselines3 PPO with a Gaussian policy (the on-policy baseline)."""

    _target_: str = "stable_baselines3.PPO"
    name: str = "ppo"
    policies: list[str] = field(default_factory=lambda: ["gaussian"])
    use_sde: bool = False  # generalized state-dependent exploration
    sde_sample_freq: int = -1  # gSDE noise resampling period (-1: per rollout)


@dataclass
class OffPolicyConfig(AlgoConfig):
    """What every replay-buffer learner takes (SAC, FlowSAC, DSRL, EDP)."""

    learning_rate: float = 3e-4  # Adam learning rate (actor, critics; SAC: temperature too)
    buffer_size: int = 1_000_000  # replay buffer transitions
    learning_starts: int = 100  # env steps before learning (warm-up actions until then)
    batch_size: int = 256  # minibatch size
    tau: float = 0.005  # target-network soft update
    train_freq: int = 1  # env steps between updates
    gradient_steps: int = 1  # gradient steps per update (-1: as many as env steps)


@dataclass
class ReplayConfig(OffPolicyConfig):
    """SAC's hyperparameters, shared by the SAC learners (SAC, FlowSAC, DSRL)."""

    ent_coef: str = "auto"  # temperature: "auto", "auto_<init>" or a number
    target_update_interval: int = 1  # gradient steps between target updates
    target_entropy: str = "auto"  # "auto" (SAC: -Da) or a number


@register_schema("algo", "sac")
@dataclass
class SACConfig(ReplayConfig):
    """Stable-Baselines3 SAC with a squashed Gaussian policy (the off-policy baseline)."""

    _target_: str = "stable_baselines3.SAC"
    name: str = "sac"
    policies: list[str] = field(default_factory=lambda: ["gaussian"])
    use_sde: bool = False  # generalized state-dependent exploration


@register_schema("algo", "flowsac")
@dataclass
class FlowSACConfig(ReplayConfig):
    """FlowSAC (``flowrl.algos.FlowSAC``): SAC on the noise-injected flow chain.

    ``target_entropy`` is per action dim per Gaussian step of the chain; "auto": the entropy
    of a step of std sqrt(sigma_min sigma_max).
    """

    _target_: str = "flowrl.algos.FlowSAC"
    name: str = "flowsac"
    policies: list[str] = field(default_factory=lambda: ["flowsac"])
    critic_warmup_steps: int = 0  # first gradient steps train only the critics (and alpha)
    bc_coef: float = 0.0  # W2 proxy to the starting flow (0: off)
    max_grad_norm: float | None = None  # clip of the actor's gradient norm (null: none)
    warmup: str = "auto"  # actions before learning_starts: policy, uniform or auto


@register_schema("algo", "dsrl")
@dataclass
class DSRLConfig(SACConfig):
    """DSRL (``flowrl.algos.DSRL``): SB3's SAC on the latent noise of the frozen BC flow."""

    _target_: str = "flowrl.algos.DSRL"
    name: str = "dsrl"
    policies: list[str] = field(default_factory=lambda: ["dsrl"])
    num_steps: int | None = None  # K of the flow's ODE (null: the actor's)
    latent_bound: float = 1.5  # b: latents live in [-b, b]^Da (the official configs' 1.5)
    warmup: str = "gaussian"  # latents before learning_starts: gaussian (the BC's) or uniform

    def pretrained_kwargs(self, pretrained: str | None) -> dict[str, Any]:
        """The BC flow to steer (``actor=``); DSRL has nothing to train without one."""
        if pretrained is None:
            raise ValueError(
                "algo=dsrl steers a frozen BC flow: pass pretrained=<bc.pt> or add the bc stage "
                "(stages=[bc,finetune] with a dataset)"
            )
        return {"actor": pretrained}


@register_schema("algo", "edp")
@dataclass
class EDPConfig(OffPolicyConfig):
    """EDP fine-tuning (``flowrl.algos.EDP``): IQL critics, distillation to π_pre·exp(Q/β).

    It starts from a pretrained flow π_pre: ``pretrained=<prior.pt>`` or the explore stage's
    (``stages=[explore,finetune]``); ``from_scratch=true`` starts from a fresh flow.
    """

    _target_: str = "flowrl.algos.EDP"
    name: str = "edp"
    policies: list[str] = field(default_factory=lambda: ["edp"])
    learning_starts: int = 1000  # env steps before learning (warm-up actions until then)
    beta: float = 0.05  # temperature of the target π_pre·exp(Q/β) (Q in reward units)
    num_candidates: int = 16  # M, actions drawn from π_pre per state for the distillation
    expectile: float = 0.9  # IQL's expectile of the value regression (0.5: the mean)
    distill_interval: int = 1  # one distillation step every this many critic steps
    distill_batch_size: int | None = None  # states per distillation step (null: batch_size)
    critic_warmup_steps: int = 0  # critic-only gradient steps before the first distillation
    max_grad_norm: float | None = None  # clip of the actor's gradient norm (null: none)
    warmup: str = "auto"  # actions before learning_starts: policy, uniform or auto

    def needs_pretrained(self) -> bool:
        """EDP distils toward its pretrained flow π_pre: it needs one (or from_scratch)."""
        return True


# ---------------------------------------------------------------------- policies


@dataclass
class PolicyConfig:
    """Base of every policy's config: its kind and the SB3 policy it names."""

    kind: str = MISSING  # matched against the algo's `policies`
    policy: str = MISSING  # SB3 policy alias handed to the algorithm

    def policy_kwargs(self, pretrained: str | None = None) -> dict[str, Any]:
        """The algorithm's ``policy_kwargs`` (``pretrained``: a FlowActor checkpoint)."""
        raise NotImplementedError


@dataclass
class FlowActorFields:
    """Velocity network of a fresh :class:`~flowrl.policies.FlowActor` (unused with pretrained)."""

    width: int = 256  # hidden width
    depth: int = 3  # residual blocks
    time_dim: int = 32  # time-embedding width
    act: str = "mish"  # activation
    gated: bool = False  # gated velocity v = g (h - x) (SAC Flow's Flow-G; FlowSAC's option)


@dataclass
class FlowPolicyBaseConfig(PolicyConfig):
    """What every flow policy of the on-policy core takes (``FlowPolicyBase``)."""

    num_steps: int | None = None  # K; null: the actor's (a checkpoint's, else 8)
    initial_std: float = 0.0  # std of the chain start / latent (0: the deterministic ODE's)
    value_hidden: list[int] = field(default_factory=lambda: [256, 256])  # value-net widths
    actor: FlowActorFields = field(default_factory=FlowActorFields)  # fresh actor only

    def policy_kwargs(self, pretrained: str | None = None) -> dict[str, Any]:
        """The policy's arguments: the pretrained checkpoint, else a fresh actor's fields."""
        kwargs: dict[str, Any] = {
            "num_steps": self.num_steps,
            "initial_std": self.initial_std,
            "value_hidden": tuple(self.value_hidden),
            **self.noise_kwargs(),
        }
        if pretrained is not None:
            kwargs["pretrained"] = pretrained
        else:
            kwargs["actor_config"] = asdict(self.actor)
        return kwargs

    def noise_kwargs(self) -> dict[str, Any]:
        """The noise model's arguments (each policy kind's own)."""
        raise NotImplementedError


@register_schema("policy", "flow")
@dataclass
class FlowPolicyConfig(FlowPolicyBaseConfig):
    """ReinFlow's noise-injected flow policy (``flowrl.policies.FlowPolicy``)."""

    kind: str = "flow"
    policy: str = "FlowPolicy"
    sigma_min: float = 0.10  # lower bound of the learned noise std (normalized actions)
    sigma_max: float = 0.24  # its upper bound at the start of training
    noise_hidden: list[int] = field(default_factory=lambda: [64, 64])  # noise-net widths

    def noise_kwargs(self) -> dict[str, Any]:
        """σ bounds and noise-net widths."""
        return {
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "noise_hidden": tuple(self.noise_hidden),
        }


@register_schema("policy", "flowsac")
@dataclass
class FlowSACPolicyConfig(FlowPolicyConfig):
    """FlowSAC's policy (``flowrl.policies.FlowSACPolicy``): the noisy chain + twin Q."""

    kind: str = "flowsac"
    policy: str = "FlowSACPolicy"
    squash: str = "auto"  # tanh (with its log-det), clip, or auto: clip if pretrained
    n_critics: int = 2  # Q-networks (value_hidden are their widths)
    critic_layer_norm: bool = False  # LayerNorm in the Q-networks
    value_act: str = "relu"  # activation of the Q-networks

    def noise_kwargs(self) -> dict[str, Any]:
        """σ bounds, noise-net widths, squashing and the critics."""
        return {
            **super().noise_kwargs(),
            "squash": self.squash,
            "n_critics": self.n_critics,
            "critic_layer_norm": self.critic_layer_norm,
            "value_act": self.value_act,
        }


@register_schema("policy", "edp")
@dataclass
class EDPPolicyConfig(FlowPolicyBaseConfig):
    """EDP's policy (``flowrl.policies.EDPPolicy``): a flow's ODE from a random start, IQL critics.

    With ``pretrained`` the actor (and the frozen π_pre it is distilled toward) comes from the
    checkpoint and ``actor`` is ignored.
    """

    kind: str = "edp"
    policy: str = "EDPPolicy"
    initial_std: float = 1.0  # std of the chain start a0 (1: the pretrained flow's samples)
    n_critics: int = 2  # Q-networks (value_hidden are their widths, and V's)
    critic_layer_norm: bool = False  # LayerNorm in the Q- and V-networks
    value_act: str = "relu"  # activation of the Q- and V-networks

    def noise_kwargs(self) -> dict[str, Any]:
        """The critics (EDP's policy has no noise model: a0 is its only randomness)."""
        return {
            "n_critics": self.n_critics,
            "critic_layer_norm": self.critic_layer_norm,
            "value_act": self.value_act,
        }


@register_schema("policy", "policyflow")
@dataclass
class PolicyFlowPolicyConfig(FlowPolicyBaseConfig):
    """PolicyFlow's policy (``flowrl.policies.PolicyFlowPolicy``): ODE map plus noise."""

    kind: str = "policyflow"
    policy: str = "PolicyFlowPolicy"
    initial_std: float = 1.0  # std of the latent z (1: as in BC training)
    sigma_init: float = 0.3  # the action noise's std at the start (normalized actions)
    sigma_min: float = 0.01  # its bounds
    sigma_max: float = 1.0
    state_dependent_std: bool = False  # sigma(o) from an MLP instead of one log-std per dim
    std_hidden: list[int] = field(default_factory=lambda: [64, 64])  # that MLP's widths

    def noise_kwargs(self) -> dict[str, Any]:
        """σ's start, bounds and parameterization."""
        return {
            "sigma_init": self.sigma_init,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "state_dependent_std": self.state_dependent_std,
            "std_hidden": tuple(self.std_hidden),
        }


@register_schema("policy", "fpo")
@dataclass
class FPOPolicyConfig(FlowPolicyBaseConfig):
    """FPO's policy (``flowrl.policies.FPOPolicy``): the flow's ODE from a random start."""

    kind: str = "fpo"
    policy: str = "FPOPolicy"
    initial_std: float = 1.0  # std of the chain start a0, the only randomness (1: as in BC)
    prediction: str = "velocity"  # how the loss reads the net: "velocity" or "epsilon"

    def noise_kwargs(self) -> dict[str, Any]:
        """How the flow-matching loss reads the network."""
        return {"prediction": self.prediction}


@register_schema("policy", "diffusion")
@dataclass
class DiffusionPolicyConfig(FlowPolicyBaseConfig):
    """DPPO's diffusion policy (``flowrl.policies.DiffusionPolicy``); takes a flow bc.pt too."""

    kind: str = "diffusion"
    policy: str = "DiffusionPolicy"
    initial_std: float = 1.0  # std of the chain start (1: DDPM's prior)
    sigma_min: float = 0.1  # floor of every denoising step's std (DPPO's)
    sigma_max: float | None = None  # cap of it (null: none, as DPPO)
    ft_denoising_steps: int | None = None  # K', the fine-tuned last steps (null: all K)
    eta: float = 1.0  # DDIM eta (1: DDPM)
    denoised_clip: float | None = 1.0  # clamp of the predicted clean action
    noise_clip: float | None = 3.0  # clamp of the sampled step noise (in stds)
    prediction: str | None = None  # "epsilon" or "velocity"; null: the actor's

    def noise_kwargs(self) -> dict[str, Any]:
        """The chain's step rule, std floor and fine-tuned steps."""
        return {
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "ft_denoising_steps": self.ft_denoising_steps,
            "eta": self.eta,
            "denoised_clip": self.denoised_clip,
            "noise_clip": self.noise_clip,
            "prediction": self.prediction,
        }


@register_schema("policy", "dsrl")
@dataclass
class DSRLPolicyConfig(PolicyConfig):
    """DSRL's latent policy (``flowrl.algos.dsrl.LatentSACPolicy``): SB3's SAC MlpPolicy on w."""

    kind: str = "dsrl"
    policy: str = "MlpPolicy"
    net_arch: list[int] | None = None  # hidden widths; null: SB3's SAC default (256, 256)
    activation_fn: str | None = None  # torch.nn class name, e.g. Tanh, ReLU; null: ReLU

    def policy_kwargs(self, pretrained: str | None = None) -> dict[str, Any]:
        """MlpPolicy arguments (the BC flow goes to the algorithm as ``actor=``)."""
        return GaussianPolicyConfig(
            net_arch=self.net_arch, activation_fn=self.activation_fn
        ).policy_kwargs()


@register_schema("policy", "gaussian")
@dataclass
class GaussianPolicyConfig(PolicyConfig):
    """SB3's ``MlpPolicy`` (diagonal Gaussian for PPO, squashed Gaussian for SAC)."""

    kind: str = "gaussian"
    policy: str = "MlpPolicy"
    net_arch: list[int] | None = None  # hidden widths; null: the algorithm's SB3 default
    log_std_init: float | None = None  # initial log std; null: the algorithm's default
    activation_fn: str | None = None  # torch.nn class name, e.g. Tanh, ReLU; null: default

    def policy_kwargs(self, pretrained: str | None = None) -> dict[str, Any]:
        """MlpPolicy arguments; only the fields that are set."""
        if pretrained is not None:
            raise ValueError(
                f"pretrained={pretrained!r} is a FlowActor checkpoint, which only flow "
                "policies load: use algo=reinflow, policyflow, fpo, fpo_pp, nft or dppo, or drop "
                "pretrained"
            )
        kwargs: dict[str, Any] = {}
        if self.net_arch is not None:
            kwargs["net_arch"] = list(self.net_arch)
        if self.log_std_init is not None:
            kwargs["log_std_init"] = self.log_std_init
        if self.activation_fn is not None:
            activation = getattr(torch.nn, self.activation_fn, None)
            if not (isinstance(activation, type) and issubclass(activation, torch.nn.Module)):
                raise ValueError(
                    f"policy.activation_fn={self.activation_fn!r} is not a torch.nn module "
                    "class; use e.g. Tanh, ReLU, ELU"
                )
            kwargs["activation_fn"] = activation
        return kwargs


# ---------------------------------------------------------------------- envs and the run


@register_schema("env", "gymnasium")
@dataclass
class EnvConfig:
    """A gymnasium task, vectorized with SB3's ``make_vec_env`` (each env in a ``Monitor``)."""

    name: str = MISSING  # short name: output paths
    id: str = MISSING  # gymnasium id; "module:Id" imports the module first (registration)
    max_episode_steps: int | None = None  # time limit; null: the env's registered default
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to gymnasium.make
    norm_reward: bool = False  # VecNormalize the rewards (observations: inside flow policies)
    # VecNormalize the observations too: for Gaussian policies trained from scratch (SB3's
    # zoo does so on MuJoCo); flow policies normalize observations themselves.
    norm_obs: bool = False
    # "dummy" (one process), "subproc" (one process per env) or "mjx" (a batch of MJX envs
    # stepped in one jitted call; `id` is then an MJX task name, see flowrl.envs.mjx)
    vec_env: str = "dummy"
    n_envs: int | None = None  # training envs; overrides the top-level n_envs (MJX batches)
    # gymnasium id of the evaluation env; null: `id`. MJX configs evaluate on the classic
    # MuJoCo task their port reproduces (parity-tested), one env, no compile.
    eval_id: str | None = None
    # Actions per decision (flowrl.envs.ActionChunk): the policy emits Ta actions at once and
    # the env plays them in turn, as DPPO/ReinFlow do (Hopper: 4). The BC stage clones
    # chunks of the dataset's actions; algo.gamma is then the discount per decision, and
    # total_timesteps / eval.freq stay in env steps.
    action_chunk: int = 1


@dataclass
class EvalConfig:
    """Periodic evaluation on a separate env (:class:`flowrl.callbacks.LearningCurveCallback`)."""

    episodes: int = 5  # episodes per evaluation and mode
    freq: int = 10_000  # env steps of training between evaluations
    deterministic: bool = True  # evaluate predict(deterministic=True)
    stochastic: bool = True  # evaluate predict(deterministic=False)
    at_start: bool = True  # also evaluate before training (e.g. the BC start)


@dataclass
class CheckpointConfig:
    """When long stages write resumable checkpoints (a rerun of the command resumes).

    An interruption (Ctrl-C, SIGTERM) also writes one: BC at the step it stopped, fine-tuning
    at its last update boundary. A killed process (SIGKILL, a crash) loses at most one period.
    """

    bc_steps: int = 1000  # BC gradient steps between checkpoints (bc/trainer.ckpt)
    # env steps of RL training between checkpoints: fine-tuning (checkpoint.pt) and the
    # dataset stage's teacher (dataset/teacher.ckpt)
    finetune_steps: int = 50_000
    # env steps of the explore stage between checkpoints (explore/checkpoint.pt, with the
    # replay buffer)
    explore_steps: int = 50_000


@dataclass
class DistributedConfig:
    """How the ranks of a torchrun job talk (a plain run ignores it).

    ``torchrun --nproc_per_node=N experiments/train.py ...`` runs one rank per process: each
    steps ``n_envs / N`` of the run's ``n_envs`` envs (the rollout, minibatches and env-step
    budget are the run's, split), gradients are averaged, rank 0 evaluates and writes.
    """

    backend: str = "auto"  # auto: nccl with CUDA, else gloo; or gloo, nccl
    # Seconds a rank waits for the others at a collective; rank 0's evaluations, checkpoints
    # and pretraining stages (which it runs alone) must fit in it.
    timeout_s: float = 1800.0


@dataclass
class TrainConfig:
    """Everything a training run reads (Hydra validates overrides against these fields)."""

    algo: AlgoConfig = MISSING  # group algo/
    policy: PolicyConfig = MISSING  # group policy/ (each algo yaml sets its default)
    env: EnvConfig = MISSING  # group env/
    seed: int = 0  # seed of the algorithm, its envs (seed, seed+1, …) and the eval env
    total_timesteps: int = 100_000  # env steps of training (all envs together)
    n_envs: int = 1  # parallel training envs
    eval: EvalConfig = field(default_factory=EvalConfig)  # the learning curve
    threads: int = 1  # torch.set_num_threads
    # FlowActor checkpoint (BC's bc.pt, the explore stage's prior.pt) to start a flow policy from
    pretrained: str | None = None
    # Fine-tune a fresh flow actor although <pretrain_dir>/bc/bc.pt (or explore/prior.pt)
    # exists, or algo=edp without a pretrained flow (without it, such a run stops: pass
    # pretrained=<that checkpoint> to start from it). Gaussian policies: no effect.
    from_scratch: bool = False
    progress_bar: bool = True  # SB3's progress bar
    verbose: int = 0  # SB3 verbosity (1: a table per rollout; eval lines)
    device: str = "cpu"  # torch device
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # resumable runs
    distributed: DistributedConfig = field(default_factory=DistributedConfig)  # under torchrun
    # Where the run writes (model, curve, results, TensorBoard). A sweep over other keys than
    # algo, env and seed must name them here, e.g. 'outputs/lr${algo.learning_rate}/seed${seed}'.
    output_dir: str = "outputs/train/${algo.name}/${env.name}/seed${seed}"
    # The pipeline: any of dataset (teacher rollouts -> .npz), bc (behaviour cloning ->
    # bc.pt, which then is `pretrained`), explore (reward-free exploration, EDP's
    # pretraining -> prior.pt, which then is `pretrained`; not with bc), finetune (the RL
    # run), in this order.
    stages: list[str] = field(default_factory=lambda: ["finetune"])
    dataset: DatasetStageConfig = field(default_factory=DatasetStageConfig)  # stage dataset
    bc: BCStageConfig = field(default_factory=BCStageConfig)  # stage bc
    explore: ExploreStageConfig = field(default_factory=ExploreStageConfig)  # stage explore
    # Folder of the dataset, bc and explore stages, shared by fine-tuning seeds (its
    # stage.json guards against reuse with other settings; explore runs with `seed`, so
    # name the seed here when exploring, as experiment=maze_edp does).
    pretrain_dir: str = "outputs/pretrain/${env.name}/${dataset.quality}_seed${dataset.seed}"


ConfigStore.instance().store(name="train_schema", node=TrainConfig)


# ---------------------------------------------------------------------- config helpers


def compose_config(*overrides: str) -> TrainConfig:
    """Compose ``configs/train.yaml`` with command-line style overrides, validated.

    Example: ``compose_config("algo=reinflow", "env=hopper", "pretrained=bc.pt")``. Inside a
    running Hydra app, the app's config search path is used (it must contain train.yaml).

    Returns:
        The config as :class:`TrainConfig` (interpolations resolved).
    """
    if GlobalHydra.instance().is_initialized():
        cfg = hydra.compose(config_name="train", overrides=list(overrides))
    else:
        with hydra.initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = hydra.compose(config_name="train", overrides=list(overrides))
    return as_train_config(cfg)


def as_train_config(cfg: TrainConfig | DictConfig) -> TrainConfig:
    """A composed ``DictConfig`` or a hand-built :class:`TrainConfig`, validated and resolved.

    Raises:
        ValueError: For a key no schema has (e.g. ``+algo.lerning_rate=…``, which Hydra
            would otherwise add and then drop without a word), naming the valid keys.
    """
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    _check_unknown_keys(node, "")
    return OmegaConf.to_object(node)  # type: ignore[return-value]


def _check_unknown_keys(node: DictConfig, prefix: str) -> None:
    """Raise on keys of ``node`` (recursively) that its dataclass schema does not have."""
    schema = OmegaConf.get_type(node)
    if schema is not None and is_dataclass(schema):
        known = [f.name for f in fields(schema)]
        for key in node:
            if key not in known:
                close = get_close_matches(str(key), known, n=1)
                hint = f"did you mean {prefix}{close[0]}? " if close else ""
                raise ValueError(
                    f"{prefix}{key} is not an option of {schema.__name__}: {hint}its options "
                    f"are {', '.join(k for k in known if not k.startswith('_'))}"
                )
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            _check_unknown_keys(child, f"{prefix}{key}.")


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as plain JSON-ready dicts and lists (what ``results.json`` stores)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def check_compatible(cfg: TrainConfig) -> None:
    """Raise unless the stages are known and the algo accepts the policy kind.

    Raises:
        ValueError: Naming the valid stages or the policies the algo accepts.
    """
    unknown = [stage for stage in cfg.stages if stage not in STAGES]
    order = [stage for stage in STAGES if stage in cfg.stages]
    if unknown or not cfg.stages or list(cfg.stages) != order:
        raise ValueError(
            f"stages={list(cfg.stages)}: choose a non-empty subset of {list(STAGES)}, in that order"
        )
    makers = [stage for stage in ("bc", "explore") if stage in cfg.stages]
    if len(makers) > 1:
        raise ValueError(
            "stages includes bc and explore, which both make the actor fine-tuning starts from "
            "(bc/bc.pt, explore/prior.pt): keep one of the two"
        )
    if makers and cfg.pretrained is not None:
        raise ValueError(
            f"stages includes {makers[0]}, which makes the pretrained actor: drop pretrained=, "
            f"or drop {makers[0]} from stages to fine-tune a given checkpoint"
        )
    if cfg.from_scratch and cfg.pretrained is not None:
        raise ValueError(
            f"from_scratch=true fine-tunes a fresh actor, pretrained={cfg.pretrained} the "
            "given one: drop one of the two"
        )
    if cfg.from_scratch and makers:
        raise ValueError(
            f"from_scratch=true fine-tunes a fresh actor, but stages includes {makers[0]}, "
            "which makes the actor to start from: drop one of the two"
        )
    for name, value, low in (
        ("total_timesteps", cfg.total_timesteps, 1),
        ("n_envs", cfg.n_envs, 1),
        ("threads", cfg.threads, 1),
        ("eval.freq", cfg.eval.freq, 1),
        ("eval.episodes", cfg.eval.episodes, 1),
        ("checkpoint.bc_steps", cfg.checkpoint.bc_steps, 0),
        ("checkpoint.finetune_steps", cfg.checkpoint.finetune_steps, 0),
        ("checkpoint.explore_steps", cfg.checkpoint.explore_steps, 0),
        ("bc.train.steps", cfg.bc.train.steps, 1),
    ):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if "explore" in cfg.stages:
        check_explore(cfg.explore)
        if cfg.env.action_chunk > 1:
            raise ValueError(
                "the explore stage fits π_pre to single actions: it does not take "
                f"env.action_chunk={cfg.env.action_chunk} (use 1)"
            )
        if cfg.explore.env_id is None and cfg.env.vec_env == "mjx":
            raise ValueError(
                f"explore.env_id=null explores the task env, but env.id={cfg.env.id} is an MJX "
                "task: set explore.env_id to a gymnasium id (e.g. the env's eval_id)"
            )
    if cfg.bc.kind not in BC_KINDS:
        raise ValueError(f"bc.kind must be one of {sorted(BC_KINDS)}, got {cfg.bc.kind!r}")
    if cfg.env.n_envs is not None and cfg.env.n_envs < 1:
        raise ValueError(f"env.n_envs must be >= 1 (or null), got {cfg.env.n_envs}")
    if not 0 < cfg.algo.gamma <= 1:
        raise ValueError(f"algo.gamma (the discount) must lie in (0, 1], got {cfg.algo.gamma}")
    if cfg.env.action_chunk < 1:
        raise ValueError(f"env.action_chunk must be >= 1, got {cfg.env.action_chunk}")
    if cfg.env.action_chunk > 1 and cfg.env.vec_env == "mjx":
        raise ValueError("env.action_chunk > 1 is for gymnasium envs; MJX envs play one action")
    if cfg.policy.kind not in cfg.algo.policies:
        choices = " or ".join(f"policy={kind}" for kind in cfg.algo.policies)
        raise ValueError(
            f"algo={cfg.algo.name} takes {choices}, got policy={cfg.policy.kind}: drop the "
            f"policy override (algo={cfg.algo.name} picks its own) or choose {choices}"
        )
    fresh = cfg.pretrained is None and not makers and not cfg.from_scratch
    if cfg.algo.needs_pretrained() and "finetune" in cfg.stages and fresh:
        prior = Path(cfg.pretrain_dir) / "explore" / "prior.pt"
        found = f" (there is one: {prior})" if prior.is_file() else ""
        raise ValueError(
            f"algo={cfg.algo.name} fine-tunes a pretrained flow π_pre toward π_pre·exp(Q/β): "
            f"pass pretrained=<prior.pt>{found}, add the explore stage "
            "(stages=[explore,finetune], e.g. experiment=maze_edp), or set from_scratch=true "
            "to start from a fresh flow on purpose"
        )


def check_bc_actor_chosen(cfg: TrainConfig) -> None:
    """Refuse to fine-tune a fresh flow actor when ``pretrain_dir`` holds a pretrained one.

    An earlier ``stages=[dataset,bc]`` run left ``<pretrain_dir>/bc/bc.pt`` (a
    ``stages=[explore]`` run ``<pretrain_dir>/explore/prior.pt``); fine-tuning without the
    stage starts from ``pretrained`` only, so leaving it unset would train from scratch for
    hours. ``from_scratch=true`` says that this is meant.

    Raises:
        ValueError: Naming the checkpoint and the two ways on.
    """
    # flow policies have a fresh actor's fields; Gaussian ones always start from scratch
    if not hasattr(cfg.policy, "actor") or "finetune" not in cfg.stages:
        return
    if cfg.pretrained is not None or cfg.from_scratch or {"bc", "explore"} & set(cfg.stages):
        return
    root = Path(cfg.pretrain_dir)
    for path, what in (
        (root / "bc" / "bc.pt", "a BC actor"),
        (root / "explore" / "prior.pt", "the explore stage's actor π_pre"),
    ):
        if path.is_file():
            raise ValueError(
                f"{path} holds {what} (pretrain_dir={cfg.pretrain_dir}), but with pretrained "
                "unset fine-tuning would start from a fresh, untrained actor: pass "
                f"pretrained={path} to start from it, or from_scratch=true to train from "
                "scratch on purpose"
            )


# Resolvers of configs/train.yaml's hydra section. abspath: a multirun job's folder is its
# output_dir (hydra.sweep.subdir, which Hydra joins to hydra.sweep.dir unless absolute).
OmegaConf.register_new_resolver("abspath", os.path.abspath, replace=True)


OmegaConf.register_new_resolver("rank_zero", rank_zero, replace=True)


def _help_groups(*groups: str) -> str:
    """``--help``'s config groups: the options of each of ``groups`` (``mjx/hopper``…)."""
    lines = []
    for group in groups:
        folder = CONFIG_DIR / group
        options = sorted(
            p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml")
        )
        options.sort(key=lambda option: option.count("/"))  # a subfolder's options last
        lines.append(textwrap.fill(f"{group}: {', '.join(options)}", 92, subsequent_indent="  "))
    return "\n".join(lines)


# train_groups: --help lists train.py's groups only (configs/dataset/ holds the presets of
# experiments/generators.py; the schema/* groups are the dataclasses above).
OmegaConf.register_new_resolver("train_groups", _help_groups, replace=True)


# ---------------------------------------------------------------------- building blocks


def make_kwargs(env_cfg: EnvConfig) -> dict[str, Any]:
    """``gymnasium.make`` arguments of the env config (its kwargs and time limit)."""
    kwargs = dict(env_cfg.kwargs)
    if env_cfg.max_episode_steps is not None:
        kwargs["max_episode_steps"] = env_cfg.max_episode_steps
    return kwargs


def make_env_stack(
    env_cfg: EnvConfig,
    n_envs: int = 1,
    seed: int = 0,
    training: bool = True,
    render_mode: str | None = None,
    inner_wrapper: Callable[[gym.Env], gym.Env] | None = None,
) -> VecEnv:
    """Vectorized envs of the config, each in a ``Monitor``, without ``VecNormalize``.

    Args:
        env_cfg: The env config.
        n_envs: Number of envs (seeds ``seed``, ``seed + 1``, …).
        seed: Seed of the first env.
        training: False for an evaluation env: an MJX config is then played on its classic
            gymnasium task (``eval_id``), and any config on its ``eval_id`` when it has one.
        render_mode: ``gymnasium.make``'s render mode (``flowrl-enjoy``).
        inner_wrapper: Wraps each env inside the action chunking (``flowrl-enjoy``'s frame
            recorder).

    Returns:
        The VecEnv.
    """
    classes = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}
    if env_cfg.vec_env not in (*classes, "mjx"):
        raise ValueError(
            f"env.vec_env={env_cfg.vec_env!r}; choose one of {sorted((*classes, 'mjx'))}"
        )
    if env_cfg.vec_env == "mjx" and training:
        from flowrl.envs.mjx import MJXVecEnv, enable_compile_cache  # needs the mjx extra

        enable_compile_cache()  # MJX compiles for tens of seconds; the next run loads it
        return MJXVecEnv(
            env_cfg.id,
            n_envs,
            seed=seed,
            max_episode_steps=env_cfg.max_episode_steps,
            task_kwargs=dict(env_cfg.kwargs),
        )
    # An MJX config is evaluated on the classic gymnasium task its port reproduces.
    mjx_eval = env_cfg.vec_env == "mjx"
    if mjx_eval and env_cfg.eval_id is None:
        raise ValueError(f"env {env_cfg.name!r} (vec_env=mjx) needs an eval_id")
    kwargs = make_kwargs(env_cfg)
    if mjx_eval:  # the MJX task's own kwargs do not apply; its time limit does
        kwargs = {k: v for k, v in kwargs.items() if k == "max_episode_steps"}
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    chunk = env_cfg.action_chunk

    def wrap(env: gym.Env) -> gym.Env:
        if inner_wrapper is not None:
            env = inner_wrapper(env)
        # outside the Monitor, which so records episodes in env steps
        return ActionChunk(env, chunk) if chunk > 1 else env

    return make_vec_env(
        env_cfg.id if training else (env_cfg.eval_id or env_cfg.id),
        n_envs=n_envs,
        seed=seed,
        env_kwargs=kwargs,
        vec_env_cls=DummyVecEnv if mjx_eval else classes[env_cfg.vec_env],
        wrapper_class=wrap if chunk > 1 or inner_wrapper is not None else None,
    )


def make_vec_env_from_config(
    env_cfg: EnvConfig,
    n_envs: int = 1,
    seed: int = 0,
    gamma: float = 0.99,
    norm_reward: bool | None = None,
    training: bool = True,
) -> VecEnv:
    """Vectorized envs of the config (:func:`make_env_stack`), normalized as it says.

    Args:
        env_cfg: The env config.
        n_envs: Number of envs (seeds ``seed``, ``seed + 1``, …).
        seed: Seed of the first env.
        gamma: Discount of the reward normalizer (the algorithm's gamma).
        norm_reward: Normalize rewards with ``VecNormalize``; None: as ``env_cfg.norm_reward``
            says (pass False for eval envs). Observations are normalized as
            ``env_cfg.norm_obs`` says.
        training: False for an eval env: its observation statistics are not updated (the
            learning-curve callback copies the training env's).

    Returns:
        The VecEnv.
    """
    venv = make_env_stack(env_cfg, n_envs, seed, training)
    norm_reward = env_cfg.norm_reward if norm_reward is None else norm_reward
    if norm_reward or env_cfg.norm_obs:
        venv = VecNormalize(
            venv,
            training=training,
            norm_obs=env_cfg.norm_obs,
            norm_reward=norm_reward,
            gamma=gamma,
        )
    return venv


def build_model(cfg: TrainConfig | DictConfig, venv: VecEnv) -> BaseAlgorithm:
    """Instantiate the configured algorithm and policy on ``venv`` (no training).

    TensorBoard logs go to ``<output_dir>/tb``. With ``cfg.pretrained`` set, a flow policy
    starts from that BC checkpoint (``policy_kwargs["pretrained"]``).

    Raises:
        ValueError: If the algo does not take the policy kind, or ``pretrained`` is set for
            a policy that cannot load it.
        FileNotFoundError: If ``pretrained`` does not exist.
    """
    cfg = as_train_config(cfg)
    check_compatible(cfg)
    if cfg.pretrained is not None and not Path(cfg.pretrained).is_file():
        raise FileNotFoundError(
            f"pretrained={cfg.pretrained!r}: no such checkpoint (a FlowActor saved by BC, "
            "e.g. FlowBC.actor_ema.save(path)); paths are relative to the working directory"
        )
    # SB3's PPO too: one set of checks (by fields: a test may load this file twice)
    if all(hasattr(cfg.algo, key) for key in ("n_steps", "batch_size", "n_epochs")):
        check_on_policy_args(
            n_steps=cfg.algo.n_steps,
            batch_size=cfg.algo.batch_size,
            n_epochs=cfg.algo.n_epochs,
            gamma=cfg.algo.gamma,
            gae_lambda=cfg.algo.gae_lambda,
            n_envs=venv.num_envs,
            warn=False,  # the learners warn themselves
        )
    params = cfg.algo.hyperparameters()
    # Schedule objects are handed over as they are (instantiate would convert them).
    schedules = {k: v for k, v in params.items() if callable(v)}
    make = hydra.utils.instantiate(
        {"_target_": cfg.algo._target_, **{k: v for k, v in params.items() if k not in schedules}},
        _partial_=True,
        _convert_="all",
    )
    kind = cfg.algo.pretrained_kwargs(cfg.pretrained)  # e.g. DSRL's actor=
    return make(
        **schedules,
        **kind,
        policy=cfg.policy.policy,
        env=venv,
        policy_kwargs=cfg.policy.policy_kwargs(None if kind else cfg.pretrained),
        tensorboard_log=str(Path(cfg.output_dir) / "tb"),
        seed=cfg.seed,
        device=cfg.device,
        verbose=cfg.verbose,
    )


def save_curve_plot(
    curve: list[dict[str, float]], path: str | os.PathLike[str], title: str
) -> None:
    """Plot returns against env steps: deterministic mean ± std, stochastic mean."""
    steps = [row["env_steps"] for row in curve]
    fig, ax = plt.subplots(figsize=(6, 4))
    if "return_deterministic_mean" in curve[0]:
        mean = np.array([row["return_deterministic_mean"] for row in curve])
        std = np.array([row["return_deterministic_std"] for row in curve])
        ax.plot(steps, mean, marker="o", label="deterministic (mean ± std)")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    if "return_stochastic_mean" in curve[0]:
        mean = np.array([row["return_stochastic_mean"] for row in curve])
        ax.plot(steps, mean, marker=".", linestyle="--", label="stochastic (mean)")
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# Options added after results.json files were first written, each with the value that does
# what runs did before it existed (and the algo or algos it belongs to, None: any): a saved
# config that lacks one ran with that value, so it still matches a config that has the value.
ADDED_OPTIONS: dict[str, tuple[Any, str | tuple[str, ...] | None]] = {
    "algo.critic_full_epochs": (False, "reinflow"),
    "algo.entropy_control": (None, "reinflow"),
    "algo.cov_fraction": (None, "reinflow"),
    "algo.clip_cov_bounds": ([1.0, 5.0], "reinflow"),
    "algo.kl_cov_coef": (1.0, "reinflow"),
    "algo.lr_schedule": ({"kind": "constant", "final_fraction": 0.0}, ("reinflow", "policyflow")),
    "dataset.teacher_norm_obs": (False, None),
    "env.action_chunk": (1, None),
    "policy.actor.gated": (False, None),
    "explore": (asdict(ExploreStageConfig()), None),
}


def with_added_options(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the :data:`ADDED_OPTIONS` it lacks filled in (a copy).

    An option is filled only where its section exists (``policy.actor.gated`` only in configs
    of policies with a fresh actor's fields).
    """
    config = json.loads(json.dumps(config))
    for dotted, (value, algo) in ADDED_OPTIONS.items():
        algos = (algo,) if isinstance(algo, str) else algo
        if algos is not None and config.get("algo", {}).get("name") not in algos:
            continue
        *parents, key = dotted.split(".")
        node = config
        for parent in parents:  # a config without the option's section never had it
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.setdefault(key, value)
    return config


def read_results(path: Path) -> dict[str, Any]:
    """A run's ``results.json``.

    Raises:
        ValueError: If the file is damaged (not JSON, or not a results object), naming it.
    """
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is damaged ({err}): it is written last and atomically by a finished run, "
            "so something else changed it; delete it to train this run again"
        ) from None
    if not isinstance(results, dict) or not isinstance(results.get("config"), dict):
        raise ValueError(f"{path} is not a flowrl results file (no 'config' object)")
    return results


def config_changes(saved: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Keys in which a saved run's config differs from ``config`` in what is trained.

    The saved config gets the :data:`ADDED_OPTIONS` it predates; :data:`RESUME_IGNORED`
    fields (where a run writes, how it reports) are not compared.
    """
    relevant = lambda c: {k: v for k, v in c.items() if k not in RESUME_IGNORED}  # noqa: E731
    return differences(relevant(with_added_options(saved)), relevant(config))


def _finished_run(out: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The results of a finished run of this config in ``out``; None if there is none.

    Raises:
        ValueError: If ``out`` holds the results of a different config.
    """
    path = out / "results.json"
    if not path.exists():
        return None
    results = read_results(path)
    changed = config_changes(results.get("config", {}), config)
    if changed:
        raise ValueError(
            f"{path} holds a finished run of another config (differs in: {', '.join(changed)}); "
            "choose another output_dir (e.g. one that names the changed keys) or delete it"
        )
    return results


# ---------------------------------------------------------------------- the run


def train(cfg: TrainConfig | DictConfig) -> dict[str, Any]:
    """Train, evaluate periodically, save the model, curve and results (skip if done).

    Returns:
        The results (as written to ``<output_dir>/results.json``).
    """
    cfg = as_train_config(cfg)
    if cfg.distributed.backend not in ("auto", "gloo", "nccl"):
        raise ValueError(
            f"distributed.backend must be auto, gloo or nccl, got {cfg.distributed.backend!r}"
        )
    # Under torchrun: join the group (a plain run: nothing happens).
    with distributed.joined(
        backend=None if cfg.distributed.backend == "auto" else cfg.distributed.backend,
        timeout_s=cfg.distributed.timeout_s,
        threads=cfg.threads,
    ):
        return _train_run(cfg)


def check_data_parallel(cfg: TrainConfig) -> None:
    """Under torchrun: refuse what the ranks cannot split (a no-op in a plain run).

    Raises:
        ValueError: On every rank, for ``n_envs`` not divisible by the number of ranks or an
            algorithm that does not train data-parallel (SB3's own PPO and SAC, DSRL).
    """
    world = distributed.world_size()
    if world == 1:
        return
    distributed.share(cfg.env.n_envs or cfg.n_envs, "n_envs", "envs")
    algo = hydra.utils.get_class(cfg.algo._target_)
    if not getattr(algo, "supports_data_parallel", False):
        raise ValueError(
            f"algo={cfg.algo.name} does not train data-parallel ({cfg.algo._target_}); launch "
            "it without torchrun (docs/distributed.md lists the learners that do)"
        )


def _train_run(cfg: TrainConfig) -> dict[str, Any]:
    """:func:`train` on every rank: rank 0 reads and writes the run folder, the others train."""
    config = config_dict(cfg)
    out = Path(cfg.output_dir)
    finished = distributed.on_main(lambda: _finished_run(out, config), "a finished-run check")
    if finished is not None:
        if distributed.is_main():
            print(f"{out}: finished run of this config found, skipping", flush=True)
        return finished
    check_compatible(cfg)
    check_data_parallel(cfg)
    distributed.on_main(lambda: check_bc_actor_chosen(cfg), "the pretrained-actor check")
    if not distributed.is_main():
        return _train(cfg, config, out)
    with folder_lock(out, wait=False):  # one process writes a run folder
        return _train(cfg, config, out)


def _train(cfg: TrainConfig, config: dict[str, Any], out: Path) -> dict[str, Any]:
    """:func:`train`'s work, in its locked output folder (rank 0; the other ranks train only)."""
    torch.set_num_threads(cfg.threads)
    main = distributed.is_main()
    world = distributed.world_size()
    n_envs = cfg.env.n_envs or cfg.n_envs
    if main:
        for partial in PARTIAL_FILES:  # left by a process killed while writing
            (out / partial).unlink(missing_ok=True)
    results: dict[str, Any] = {"config": config}
    # Under torchrun the bc stage trains data-parallel; dataset and explore run on rank 0.
    pretrained = _pretrain(cfg, results)
    if "finetune" not in cfg.stages:
        if main:
            _write_results(out, results)
        return results
    # From here on a plain fine-tuning run of the checkpoint the stages made (or were given).
    cfg = replace(cfg, pretrained=pretrained, stages=["finetune"])

    # Rank r steps envs r·E … (r+1)·E − 1 of the run's n_envs (their seeds too).
    local = distributed.share(n_envs, "n_envs", "envs")
    venv = make_vec_env_from_config(
        cfg.env, local, distributed.rank_seed(cfg.seed, local), cfg.algo.gamma
    )
    model = build_model(cfg, venv)
    if not main:
        return _train_other_rank(cfg, config, model, venv, out)
    eval_env = make_vec_env_from_config(
        cfg.env, 1, cfg.seed + EVAL_SEED_OFFSET, cfg.algo.gamma, norm_reward=False, training=False
    )
    # SB3 counts decisions; one decision plays action_chunk env steps (fewer at an episode's
    # end), so the budget and the evaluation period in env steps are divided by it.
    chunk = cfg.env.action_chunk
    curve = LearningCurveCallback(
        eval_env,
        eval_freq=max(1, cfg.eval.freq // chunk),
        n_eval_episodes=cfg.eval.episodes,
        deterministic=cfg.eval.deterministic,
        stochastic=cfg.eval.stochastic,
        evaluate_at_start=cfg.eval.at_start,
        best_model_path=out / "best_model.zip",
        verbose=cfg.verbose,
    )
    ckpt = TrainingCheckpoint(
        out / CHECKPOINT,
        save_freq=cfg.checkpoint.finetune_steps // chunk if cfg.checkpoint.finetune_steps else 0,
        extra=lambda: {"config": config, "curve": curve.state_dict()},
    )
    resumed = _resume(ckpt, model, curve, config, cfg.seed)
    budget = -(-cfg.total_timesteps // chunk)
    start = time.perf_counter()
    if model.num_timesteps < budget:
        with sigterm_as_interrupt():
            try:
                model.learn(
                    budget - model.num_timesteps,
                    callback=[curve, ckpt],
                    tb_log_name=cfg.algo.name,
                    reset_num_timesteps=not resumed,
                    progress_bar=cfg.progress_bar,
                )
            except KeyboardInterrupt:
                if ckpt.save_latest():
                    steps = ckpt.latest["counters"]["num_timesteps"]  # type: ignore[index]
                    print(
                        f"\n{out}: interrupted; checkpoint of step {steps} written to "
                        f"{ckpt.path}: rerun the same command to resume",
                        flush=True,
                    )
                raise
        ckpt.write()  # the finished state: a crash while writing the outputs loses nothing
    wall = curve.state_dict()["elapsed_s"] if resumed else time.perf_counter() - start
    distributed.barrier("the end of training")

    _save_model(model, venv, out)
    curve.save_csv(out / "curve.csv")
    title = f"{cfg.algo.name} on {cfg.env.id}, seed {cfg.seed}"
    save_curve_plot(curve.curve, out / "curve.png", title)
    train_seconds = max(wall - curve.eval_seconds, 1e-9)
    results.update(
        timesteps=int(model.num_timesteps),
        env_steps=int(curve.env_steps or 0),
        start=curve.curve[0] if cfg.eval.at_start else None,
        final=curve.last,
        wall_time_s=wall,
        eval_time_s=curve.eval_seconds,
        steps_per_second=model.num_timesteps / train_seconds,  # training only
        world_size=world,
        curve=curve.curve,
    )
    _write_results(out, results)
    ckpt.path.unlink(missing_ok=True)  # results.json now marks the run finished
    venv.close()
    eval_env.close()
    print(f"{out}: {results['env_steps']} env steps in {wall:.0f} s", flush=True)
    print(_summary(cfg, results), flush=True)
    return results


def _train_other_rank(
    cfg: TrainConfig, config: dict[str, Any], model: BaseAlgorithm, venv: VecEnv, out: Path
) -> dict[str, Any]:
    """A torchrun rank other than 0: resume as rank 0 does, train, write nothing."""
    ckpt = TrainingCheckpoint(out / CHECKPOINT, save_freq=0)  # read through rank 0, never written
    resumed = _resume(ckpt, model, None, config, cfg.seed)
    budget = -(-cfg.total_timesteps // cfg.env.action_chunk)
    if model.num_timesteps < budget:
        with sigterm_as_interrupt():
            model.learn(
                budget - model.num_timesteps,
                tb_log_name=cfg.algo.name,
                reset_num_timesteps=not resumed,
            )
    distributed.barrier("the end of training")
    venv.close()
    return {"rank": distributed.rank(), "timesteps": int(model.num_timesteps)}


def _resume(
    ckpt: TrainingCheckpoint,
    model: BaseAlgorithm,
    curve: LearningCurveCallback | None,
    config: dict[str, Any],
    seed: int = 0,
) -> bool:
    """Restore an interrupted run of this config from its checkpoint; False if there is none.

    Under torchrun rank 0 reads the checkpoint and every rank restores it; ranks other than
    0 then reseed (their noise must differ from rank 0's, whose generator state the
    checkpoint holds), so only rank 0 continues exactly as an uninterrupted run would.

    Raises:
        ValueError: If the checkpoint is damaged or of another config.
    """
    state = distributed.on_main(
        lambda: ckpt.load() if ckpt.exists() else None, "reading the checkpoint to resume"
    )
    if state is None:
        return False
    changed = config_changes(state["extra"].get("config", {}), config)
    if changed:
        raise ValueError(
            f"{ckpt.path} is a checkpoint of another config (differs in: {', '.join(changed)}); "
            "choose another output_dir or delete the checkpoint to start afresh"
        )
    ckpt.resume(model, state)
    if not distributed.is_main():
        model.set_random_seed(seed + model.num_timesteps)  # offset by rank
    if curve is not None:
        curve.load_state_dict(state["extra"]["curve"])
    if distributed.is_main():
        print(f"{ckpt.path}: resuming at step {model.num_timesteps}", flush=True)
    return True


def _save_model(model: BaseAlgorithm, venv: VecEnv, out: Path) -> None:
    """model.zip (and vecnormalize.pkl), each under a temporary name first."""
    model.save(out / "model.partial.zip")
    os.replace(out / "model.partial.zip", out / "model.zip")
    if isinstance(venv, VecNormalize):
        venv.save(str(out / "vecnormalize.partial.pkl"))
        os.replace(out / "vecnormalize.partial.pkl", out / "vecnormalize.pkl")


def _pretrain(cfg: TrainConfig, results: dict[str, Any]) -> str | None:
    """Run the dataset, bc and explore stages that are asked for; the checkpoint to fine-tune."""
    pretrained = cfg.pretrained
    if "dataset" in cfg.stages or "bc" in cfg.stages:
        pretrained = _offline_stages(cfg, results) or pretrained
    if "explore" in cfg.stages:
        pretrained = distributed.on_main(
            lambda: _explore_stage(cfg, results), "the explore stage (on rank 0)"
        )
    return pretrained


def _explore_stage(cfg: TrainConfig, results: dict[str, Any]) -> str:
    """The explore stage (EDP's reward-free pretraining); the π_pre checkpoint it made."""
    out = Path(cfg.pretrain_dir) / "explore"
    task = cfg.explore.env_id is None  # explore the task env itself, as configured
    path = explore_pretrain(
        cfg.explore,
        cfg.env.id if task else cfg.explore.env_id,  # type: ignore[arg-type]
        out,
        seed=cfg.seed,
        env_kwargs=make_kwargs(cfg.env) if task else {},
        device=cfg.device,
        progress_bar=cfg.progress_bar,
        checkpoint_steps=cfg.checkpoint.explore_steps,
        verbose=cfg.verbose,
    )
    summary = json.loads((out / "explore.json").read_text())
    summary.pop("coverage_history", None)  # explore.json has the rows; results the result
    results["explore"] = {"path": str(path), **summary}
    return str(path)


def _offline_stages(cfg: TrainConfig, results: dict[str, Any]) -> str | None:
    """The dataset and bc stages; the BC checkpoint (None without the bc stage).

    Under torchrun rank 0 alone makes the dataset (the other ranks wait for it); every rank
    then takes part in behaviour cloning, which trains data-parallel.
    """
    root = Path(cfg.pretrain_dir)
    dataset_path = distributed.on_main(
        lambda: _dataset_stage(cfg, root), "the dataset stage (on rank 0)"
    )
    returns = dataset_returns(dataset_path)
    results["dataset"] = {
        "path": str(dataset_path),
        "episodes": int(returns.size),
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
    }
    if "bc" not in cfg.stages:
        return None
    path = behaviour_clone(
        cfg.bc,
        cfg.dataset.path or dataset_path,
        cfg.env.id,
        root / "bc",
        cfg.progress_bar,
        cfg.env.action_chunk,
        cfg.checkpoint.bc_steps,
    )
    results["bc"] = {"path": str(path), "steps": cfg.bc.train.steps}
    return str(path)


def _dataset_stage(cfg: TrainConfig, root: Path) -> Path:
    """The dataset stage (or the dataset it made before); its ``.npz``."""
    made = root / "dataset" / "dataset.npz"
    if "dataset" not in cfg.stages and cfg.dataset.path is None and not made.exists():
        raise ValueError(
            f"stage bc needs a dataset: add the dataset stage, set dataset.path, or make "
            f"{made} first"
        )
    return make_dataset(
        cfg.dataset,
        cfg.env.id,
        root / "dataset",
        make_kwargs(cfg.env),
        cfg.checkpoint.finetune_steps,
    )


def _write_results(out: Path, results: dict[str, Any]) -> None:
    """Write results.json last and atomically: its presence marks a finished run."""
    (out / "results.json.tmp").write_text(json.dumps(results, indent=2) + "\n")
    os.replace(out / "results.json.tmp", out / "results.json")


def _summary(cfg: TrainConfig, results: dict[str, Any]) -> str:
    """Before -> after returns in one line per policy mode (what the main job prints)."""
    lines = []
    if "dataset" in results:
        data = results["dataset"]
        lines.append(
            f"dataset: return {data['return_mean']:.0f} ± {data['return_std']:.0f} "
            f"over {data['episodes']} episodes"
        )
    if "explore" in results:
        data = results["explore"]
        covered = f", {data['cells']:.0%} of the maze's cells" if "cells" in data else ""
        lines.append(f"explore: {data['steps']} env steps of {data['env']}{covered}")
    start, final = results.get("start"), results["final"]
    for mode in ("deterministic", "stochastic"):
        key = f"return_{mode}_mean"
        if key not in final:
            continue
        after = f"{final[key]:.0f} ± {final[f'return_{mode}_std']:.0f}"
        if start is not None:
            before = f"{start[key]:.0f} ± {start[f'return_{mode}_std']:.0f}"
            lines.append(
                f"{mode}: start {before} -> {cfg.algo.name} {after} "
                f"after {results['env_steps']} env steps ({final[key] - start[key]:+.0f})"
            )
        else:
            lines.append(f"{mode}: {cfg.algo.name} {after} after {results['env_steps']} env steps")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="train")
def main(cfg: DictConfig) -> dict[str, Any]:
    """Hydra entry point: validate the config and train."""
    return train(cfg)


if __name__ == "__main__":
    main()
