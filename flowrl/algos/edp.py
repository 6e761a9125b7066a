"""EDP: exploratory diffusion (flow) policies — reward-free exploration, then fine-tuning.

    explore = EDPExplore("MlpPolicy", "flowrl/PointMaze-Medium-v0")   # no reward read
    explore.learn(100_000)
    explore.pretrained_actor.save("edp_prior.pt")                     # a FlowActor checkpoint

    model = EDP("EDPPolicy", "flowrl/PointMazeGoal-Medium-v0",
                policy_kwargs={"pretrained": "edp_prior.pt"}, beta=0.05)
    model.learn(50_000)

After EDP (arXiv 2502.07279; revised as ExDM, "Exploratory Diffusion Model", ICLR 2026):

**Pretraining without rewards** (:class:`EDPExplore`). A behaviour policy collects data and is
trained off-policy on the score intrinsic reward of :class:`~flowrl.algos.exploration.
ScoreNovelty` — the flow-matching error of a flow model of the replay buffer's states, high
where the buffer is thin. As in the paper, the behaviour policy is Gaussian (SB3's SAC actor;
the reference code uses a DDPG actor with fixed noise): sampling a multi-step flow at every env
step is slow. ``EDPExploreFlow`` is the same learner with a FlowSAC behaviour policy instead.
Alongside, a flow policy π_pre(a|o) is fitted by flow matching to the buffer's actions (the
paper's diffusion policy of the explored data); it is what fine-tuning starts from
(:attr:`EDPExplore.pretrained_actor`).

**Fine-tuning with the task reward** (:class:`EDP`). The KL-regularized objective
max_π E[Q(o, a)] − β·KL(π‖π_pre) has the solution π*(a|o) ∝ π_pre(a|o)·exp(Q(o, a)/β). EDP
alternates

* Q-function optimization: IQL's critics on the replay buffer (expectile regression of
  V(o) on min_i Q̄_i(o, a) with ``expectile`` τ, and Q_i(o, a) → r + γ(1 − d)·V(o')), and
* distillation of the flow policy toward π_pre·exp(Q/β): for each state of a batch,
  ``num_candidates`` actions a_j ~ π_pre(·|o) are weighted by w_j = softmax_j(Q(o, a_j)/β)
  (:func:`tilted_weights`) and the actor is trained by flow matching on them with those
  weights. With self-normalized importance weights the minimizer of the weighted
  flow-matching loss is the velocity field of π_pre·exp(Q/β) as the number of candidates
  grows (the flow-matching loss is a mean squared error, and the weights reweight π_pre's
  samples into the tilted distribution).

The paper reaches the same target by contrastive energy prediction (QGPO's intermediate
energy guidance on a copy of the pretrained score) and then distils it; here the candidate
weights enter the flow-matching loss directly, so there is no second (energy) network and no
second noise schedule. ``distill_interval`` sets the alternation: one distillation step every
that many critic steps (after ``critic_warmup_steps`` critic-only steps).

Under ``torchrun`` (:mod:`flowrl.distributed`) :class:`EDP` trains data-parallel as FlowSAC
does (:class:`~flowrl.algos.common.OffPolicyFlowLearner`); the reward-free explorers
(:class:`EDPExplore`, :class:`EDPExploreFlow`) do not (their state model, π_pre and running
statistics are fitted per process) and refuse to be built in a process group.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.type_aliases import GymEnv, ReplayBufferSamples, Schedule
from stable_baselines3.common.utils import polyak_update
from torch import Tensor
from torch.nn import functional as F

from flowrl import distributed
from flowrl.algos.common import OffPolicyFlowLearner
from flowrl.algos.exploration import IntrinsicRewardMixin
from flowrl.algos.flow_sac import FlowSAC, check_off_policy_args
from flowrl.data.normalizers import Normalizer
from flowrl.flow.losses import flow_matching_loss
from flowrl.policies.edp import EDPPolicy
from flowrl.policies.flow_actor import FlowActor, FlowActorConfig

__all__ = ["EDP", "EDPExplore", "EDPExploreFlow", "expectile_loss", "tilted_weights"]


def tilted_weights(q: Tensor, beta: float) -> Tensor:
    """Self-normalized weights of candidates a_j ~ π_pre for the target π_pre·exp(Q/β).

    Args:
        q: Q(o, a_j) of the candidates, shape (..., M) (the last dim holds one state's M).
        beta: Temperature β > 0 (small: greedy among the candidates; large: π_pre).

    Returns:
        softmax_j(Q_j/β), shape (..., M), summing to 1 over the last dim.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    return torch.softmax(q / beta, dim=-1)


def expectile_loss(diff: Tensor, expectile: float) -> Tensor:
    """IQL's asymmetric squared loss |τ − 1(u < 0)|·u² of residuals u = Q − V, shape as u."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return weight * diff.square()


# ====================================================================== pretraining


class _ExploreMixin(IntrinsicRewardMixin):
    """EDP's pretraining on top of an SB3 off-policy learner.

    The score intrinsic reward (:class:`~flowrl.algos.exploration.IntrinsicRewardMixin` with
    ``"score"``) and π_pre, a flow policy fitted by flow matching to the replay buffer's
    actions on every batch.
    """

    prior_actor: FlowActor
    prior_optimizer: torch.optim.Optimizer

    def __init__(
        self,
        policy: Any,
        env: Any,
        *,
        intrinsic_kwargs: dict[str, Any] | None = None,
        intrinsic_scale: float = 1.0,
        novelty_updates: int = 1,
        actor_config: dict[str, Any] | None = None,
        actor_learning_rate: float = 3e-4,
        actor_updates: int = 1,
        **kwargs: Any,
    ):
        if not actor_learning_rate > 0:
            raise ValueError(f"actor_learning_rate must be > 0, got {actor_learning_rate!r}")
        if isinstance(actor_updates, bool) or not (
            isinstance(actor_updates, int) and actor_updates >= 0
        ):
            raise ValueError(f"actor_updates must be an integer >= 0, got {actor_updates!r}")
        self.actor_config = dict(actor_config or {})
        self.actor_learning_rate = float(actor_learning_rate)
        self.actor_updates = actor_updates
        super().__init__(
            policy,
            env,
            intrinsic="score",
            intrinsic_kwargs=intrinsic_kwargs,
            intrinsic_scale=intrinsic_scale,
            novelty_updates=novelty_updates,
            **kwargs,
        )

    def _setup_model(self) -> None:
        super()._setup_model()
        obs_space, action_space = self.observation_space, self.action_space  # type: ignore[attr-defined]
        if not isinstance(action_space, spaces.Box) or len(action_space.shape) != 1:
            raise ValueError(f"EDP needs Box actions of shape (Da,), got {action_space}")
        fields = dict(self.actor_config)
        fields.update(obs_dim=int(obs_space.shape[0]), action_dim=int(action_space.shape[0]))
        self.prior_actor = FlowActor(
            FlowActorConfig(**fields),
            Normalizer.identity(fields["obs_dim"]),
            Normalizer.box(action_space.low, action_space.high),
        ).to(self.device)  # type: ignore[attr-defined]
        self.prior_optimizer = torch.optim.Adam(
            self.prior_actor.parameters(), lr=self.actor_learning_rate
        )

    def _fit_prior(self, data: ReplayBufferSamples) -> list[float]:
        """``actor_updates`` flow-matching steps on the batch's (o, a), a in env units."""
        low = torch.as_tensor(self.action_space.low, device=data.actions.device)  # type: ignore[attr-defined]
        high = torch.as_tensor(self.action_space.high, device=data.actions.device)  # type: ignore[attr-defined]
        env_actions = low + 0.5 * (data.actions + 1.0) * (high - low)  # SB3 stores [−1, 1]
        losses = []
        for _ in range(self.actor_updates):
            loss = self.prior_actor.bc_loss(data.observations.float(), env_actions.float())["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the pretrained flow's loss is {float(loss)}; the update was not applied"
                )
            self.prior_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.prior_optimizer.step()
            losses.append(float(loss.detach()))
        return losses

    def _relabel(self, data: ReplayBufferSamples) -> ReplayBufferSamples:
        for loss in self._fit_prior(data):
            self._intrinsic_stats.setdefault("prior_loss", []).append(loss)
        return super()._relabel(data)

    @property
    def pretrained_actor(self) -> FlowActor:
        """A frozen copy of π_pre, the flow policy of the explored data (for :class:`EDP`)."""
        return copy.deepcopy(self.prior_actor).cpu().requires_grad_(False).eval()

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write π_pre as a :class:`~flowrl.policies.FlowActor` checkpoint (no pickle)."""
        self.pretrained_actor.save(path)

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, variables = super()._get_torch_save_params()
        return [*state_dicts, "prior_actor", "prior_optimizer"], variables

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "prior_actor", "prior_optimizer"]


class EDPExplore(_ExploreMixin, SAC):
    """EDP's reward-free pretraining with a Gaussian behaviour policy (SB3's SAC).

    Args:
        policy: SB3 SAC policy (``"MlpPolicy"``), the behaviour policy.
        env: The env; its reward is dropped unread
            (:class:`~flowrl.algos.exploration.RewardFree`).
        intrinsic_kwargs: Options of :class:`~flowrl.algos.exploration.ScoreNovelty`
            (``num_draws``, ``width``, ``depth``, ``learning_rate``).
        intrinsic_scale: Multiplier of the normalized score reward.
        novelty_updates: Steps of the state flow model per replay batch.
        actor_config: :class:`~flowrl.policies.FlowActorConfig` fields of π_pre (width,
            depth, num_steps, …).
        actor_learning_rate: Adam step size of π_pre.
        actor_updates: Flow-matching steps of π_pre per replay batch (0: do not fit it).
        **kwargs: SB3 SAC's arguments.
    """


class EDPExploreFlow(_ExploreMixin, FlowSAC):
    """:class:`EDPExplore` with a flow behaviour policy (FlowSAC's noisy chain) instead.

    Takes FlowSAC's arguments (``"FlowSACPolicy"``) plus EDPExplore's own.
    """


# ====================================================================== fine-tuning


class EDP(OffPolicyFlowLearner, OffPolicyAlgorithm):
    """EDP fine-tuning: IQL critics and distillation toward π_pre·exp(Q/β), alternating.

    Args:
        policy: ``"EDPPolicy"``, the class, or an instance (give the pretrained flow as
            ``policy_kwargs={"pretrained": actor_or_path}``).
        env: The task env (with its reward).
        learning_rate: Adam step size of actor and critics (or a schedule).
        buffer_size: Replay capacity.
        learning_starts: Env steps collected before the first update.
        batch_size: Critic minibatch size.
        tau: Polyak coefficient of the target critics.
        gamma: Discount.
        train_freq: SB3's ``train_freq``.
        gradient_steps: Critic steps per rollout (-1: as many as env steps).
        beta: Temperature β of the target π_pre·exp(Q/β) (Q in reward units).
        num_candidates: M, actions drawn from π_pre per state for the distillation.
        expectile: τ of IQL's value regression (0.5: the mean, → 1: the max; the reference
            code uses 0.9).
        distill_interval: One distillation step every this many critic steps.
        distill_batch_size: States per distillation step (default: ``batch_size``); each
            brings M candidates.
        critic_warmup_steps: Critic-only steps before the first distillation step.
        max_grad_norm: Clip of the actor's gradient norm (None: no clipping).
        warmup: Actions before ``learning_starts``: ``"policy"`` (the pretrained flow),
            ``"uniform"`` (the box), ``"auto"`` (policy if pretrained, else uniform).

    The other arguments are SB3 ``OffPolicyAlgorithm``'s (``replay_buffer_class``,
    ``policy_kwargs``, ``tensorboard_log``, ``verbose``, ``seed``, ``device``, …).

    Under ``torchrun`` every rank builds the learner with the same arguments and its own E envs
    (seeded ``seed + rank·E``) and calls ``learn``: the ranks start from rank 0's weights,
    ``batch_size``, ``distill_batch_size`` and ``buffer_size`` are global (each rank samples
    its 1/W share of each minibatch from its own buffer of ``buffer_size / W`` transitions),
    ``num_timesteps`` (hence ``learning_starts``, ``total_timesteps`` and
    ``gradient_steps=-1``) counts every rank's env steps, ``train_freq`` must count steps, and
    each gradient step averages the critics', the value net's and (when it distils) the
    actor's gradients over the ranks (before the actor's clip) in one all-reduce that also
    refuses the step on every rank if a loss is not finite on any. The copies stay
    bit-identical (checked after every ``train``); rank 0 alone runs callbacks, logs and
    saves, and its checkpoint is a single-process one.

    Raises:
        ValueError: Naming a bad argument and its valid range; under torchrun also a
            ``batch_size`` or distillation batch the world size does not divide, or a
            ``train_freq`` in episodes (on every rank).
    """

    policy_aliases: ClassVar[dict[str, type]] = {"EDPPolicy": EDPPolicy}  # type: ignore[misc]
    policy: EDPPolicy
    policy_base = EDPPolicy
    replay_buffer: ReplayBuffer
    default_log_interval = 4

    def __init__(
        self,
        policy: str | type[EDPPolicy] | EDPPolicy,
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        buffer_size: int = 1_000_000,
        learning_starts: int = 1000,
        batch_size: int = 256,
        tau: float = 0.005,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 1,
        gradient_steps: int = 1,
        beta: float = 0.05,
        num_candidates: int = 16,
        expectile: float = 0.9,
        distill_interval: int = 1,
        distill_batch_size: int | None = None,
        critic_warmup_steps: int = 0,
        max_grad_norm: float | None = None,
        warmup: str = "auto",
        action_noise: ActionNoise | None = None,
        replay_buffer_class: type[ReplayBuffer] | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        optimize_memory_usage: bool = False,
        n_steps: int = 1,
        policy_kwargs: dict[str, Any] | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        check_off_policy_args(
            learning_rate=learning_rate,
            buffer_size=buffer_size,
            learning_starts=learning_starts,
            batch_size=batch_size,
            tau=tau,
            gamma=gamma,
            gradient_steps=gradient_steps,
            target_update_interval=1,
        )
        if not (isinstance(beta, (int, float)) and beta > 0 and math.isfinite(beta)):
            raise ValueError(f"beta (the temperature of π_pre·exp(Q/β)) must be > 0, got {beta!r}")
        for name, value, low in (
            ("num_candidates", num_candidates, 1),
            ("distill_interval", distill_interval, 1),
            ("critic_warmup_steps", critic_warmup_steps, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if distill_batch_size is not None and (
            isinstance(distill_batch_size, bool)
            or not isinstance(distill_batch_size, (int, np.integer))
            or distill_batch_size < 1
        ):
            raise ValueError(
                f"distill_batch_size must be a positive integer or None, got {distill_batch_size!r}"
            )
        if not 0 < expectile < 1:
            raise ValueError(f"expectile must lie in (0, 1), got {expectile!r}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")
        self.beta = float(beta)
        self.num_candidates = int(num_candidates)
        self.expectile = float(expectile)
        self.distill_interval = int(distill_interval)
        self.distill_batch_size = None if distill_batch_size is None else int(distill_batch_size)
        self.critic_warmup_steps = int(critic_warmup_steps)
        self.max_grad_norm = max_grad_norm
        pretrained = isinstance(policy, EDPPolicy) or bool((policy_kwargs or {}).get("pretrained"))
        self.warmup = self.resolve_warmup(warmup, pretrained)
        super().__init__(
            policy,  # type: ignore[arg-type]
            env,
            learning_rate,
            buffer_size=buffer_size,
            learning_starts=learning_starts,
            batch_size=batch_size,
            tau=tau,
            gamma=gamma,
            train_freq=train_freq,
            gradient_steps=gradient_steps,
            action_noise=action_noise,
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            optimize_memory_usage=optimize_memory_usage,
            n_steps=n_steps,
            policy_kwargs=policy_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            seed=seed,
            sde_support=False,
            supported_action_spaces=None,
            support_multi_env=True,
        )
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        self._setup_policy()
        self._convert_train_freq()
        self._check_world()
        self._make_replay_buffer()

    @property
    def _distill_rows(self) -> int:
        """States per distillation step, all ranks together (at most ``batch_size``)."""
        return min(self.distill_batch_size or self.batch_size, self.batch_size)

    def _check_world(self) -> None:
        super()._check_world()
        distributed.share(self._distill_rows, "distill_batch_size", "distillation batch")

    def _distributed_settings(self) -> dict[str, Any]:
        return {
            **super()._distributed_settings(),
            "critic_warmup_steps": self.critic_warmup_steps,
            "distill_interval": self.distill_interval,
            "distill_batch_size": self.distill_batch_size,
        }

    # ------------------------------------------------------------------ losses

    def critic_losses(self, data: ReplayBufferSamples) -> tuple[Tensor, Tensor, Tensor]:
        """IQL's losses on a batch: ``(q_loss, v_loss, Q(o, a) of the critics (n, B))``."""
        policy = self.policy
        discounts = data.discounts if data.discounts is not None else self.gamma
        with torch.no_grad():
            q_target = policy.q_values(data.observations, data.actions, target=True)
            next_v = policy.state_values(data.next_observations)
            discount = discounts.flatten() if isinstance(discounts, Tensor) else discounts
            target = data.rewards.flatten() + (1 - data.dones.flatten()) * discount * next_v
        v = policy.state_values(data.observations)
        v_loss = expectile_loss(q_target.min(dim=0).values - v, self.expectile).mean()
        q = policy.q_values(data.observations, data.actions)
        q_loss = 0.5 * sum(F.mse_loss(qi, target) for qi in q)
        return q_loss, v_loss, q  # type: ignore[return-value]

    def distillation_loss(self, obs: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Weighted flow matching of the actor on π_pre's candidates, weights softmax(Q/β).

        Args:
            obs: Raw observations, shape (B, Do).

        Returns:
            The loss (scalar) and diagnostics: the candidates' mean effective sample size
            1/Σ_j w_j² (M: uniform weights, 1: one candidate takes all) and the mean
            weighted Q minus the mean candidate Q (the improvement the target asks for).
        """
        policy, m = self.policy, self.num_candidates
        obs_rep = obs.repeat_interleave(m, dim=0)
        with torch.no_grad():
            candidates = policy.sample_normalized(obs_rep, reference=True).clamp(-1.0, 1.0)
            q = policy.q_values(obs_rep, candidates).min(dim=0).values.view(-1, m)
            weights = tilted_weights(q, self.beta)
        actor = policy.actor
        obs_n = actor.normalize_obs(policy._cast(obs_rep))
        t = torch.rand(candidates.shape[0], device=obs.device, dtype=candidates.dtype)
        per_sample = flow_matching_loss(
            lambda tt, x: actor.velocity(tt, x, obs_n),
            candidates,
            t,
            torch.randn_like(candidates),
            reduction="none",
        ).view(-1, m)
        loss = (weights * per_sample).sum(dim=-1).mean()
        stats = {
            "ess": float((1.0 / weights.square().sum(dim=-1)).mean()),
            "q_gain": float(((weights * q).sum(dim=-1) - q.mean(dim=-1)).mean()),
        }
        return loss, stats

    # ------------------------------------------------------------------ update

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        """``gradient_steps`` critic steps; a distillation step every ``distill_interval``.

        ``batch_size`` is the global minibatch: under torchrun this rank samples its share.
        """
        policy = self.policy
        policy.set_training_mode(True)
        optimizers = [policy.critic_optimizer, policy.optimizer]
        self._update_learning_rate(optimizers)
        sync = distributed.GradientSync(
            p for opt in optimizers for g in opt.param_groups for p in g["params"]
        )
        distill_rows = distributed.share(min(self.distill_batch_size or batch_size, batch_size))
        batch_size = distributed.share(batch_size)
        stats: dict[str, list[float]] = {
            k: [] for k in ("q_loss", "v_loss", "q", "actor", "ess", "q_gain", "grad_norm")
        }
        for _ in range(gradient_steps):
            step = self._n_updates
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
            q_loss, v_loss, q = self.critic_losses(data)
            distill = step >= self.critic_warmup_steps and (
                (step - self.critic_warmup_steps) % self.distill_interval == 0
            )
            actor_loss = None
            if distill:
                actor_loss, info = self.distillation_loss(data.observations[:distill_rows])
            losses = {"q": q_loss, "v": v_loss, "distillation": actor_loss}
            if not distributed.is_distributed():  # refused before any step
                for name, loss in losses.items():
                    if loss is not None and not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"EDP {name} loss is {float(loss)}; the update was not applied. "
                            "Check rewards/observations for NaN or extreme values, or lower the "
                            "learning rate."
                        )
            # The distillation targets were drawn (no gradient) before the critics step, so
            # both gradients are taken first and averaged over the ranks in one all-reduce.
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            (q_loss + v_loss).backward()
            if actor_loss is not None:
                actor_loss.backward()
            self._average_gradients(sync, losses)
            policy.critic_optimizer.step()
            if actor_loss is not None:
                clip = self.max_grad_norm if self.max_grad_norm is not None else math.inf
                grad_norm = torch.nn.utils.clip_grad_norm_(policy._actor_parameters(), clip)
                policy.optimizer.step()
                stats["actor"].append(float(actor_loss.detach()))
                stats["ess"].append(info["ess"])
                stats["q_gain"].append(info["q_gain"])
                stats["grad_norm"].append(float(grad_norm))
            polyak_update(policy.critic.parameters(), policy.critic_target.parameters(), self.tau)
            stats["q_loss"].append(float(q_loss.detach()))
            stats["v_loss"].append(float(v_loss.detach()))
            stats["q"].append(float(q.detach().mean()))
            self._n_updates += 1
        self._check_in_sync()
        self._record(stats)

    def _record(self, stats: dict[str, list[float]]) -> None:
        mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/critic_loss", mean(stats["q_loss"]))
        self.logger.record("train/value_loss", mean(stats["v_loss"]))
        self.logger.record("train/q_mean", mean(stats["q"]))
        self.logger.record("train/actor_loss", mean(stats["actor"]))
        self.logger.record("train/learning_rate", self.policy.optimizer.param_groups[0]["lr"])
        self.logger.record("edp/candidate_ess", mean(stats["ess"]))
        self.logger.record("edp/q_gain", mean(stats["q_gain"]))
        self.logger.record("edp/beta", self.beta)
        self.logger.record("flow/actor_grad_norm", mean(stats["grad_norm"]))
        self.logger.record("flow/num_steps", self.policy.num_steps)

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy", "policy.optimizer", "policy.critic_optimizer"], []
