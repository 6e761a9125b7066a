"""FlowSAC: soft actor-critic whose actor is a K-step noise-injected flow chain.

    model = FlowSAC("FlowSACPolicy", "Hopper-v5", policy_kwargs={"pretrained": "bc.pt"})
    model.learn(200_000)

ReinFlow's chain (arXiv 2505.22094) has an exact likelihood, a sum of Gaussian
log-densities, and is sampled by reparameterization, so SAC's entropy-regularized losses
apply to it directly (as in SAC Flow, arXiv 2509.25756, whose gated velocity
``actor_config=dict(gated=True)`` is an option here):

* critics:  L_Q = ½ Σ_i E[(Q_i(o, y) − r − γ(1 − d)(min_j Q̄_j(o', y') − α log π(y'|o')))²],
  y' from the current actor at o' (no gradient), Q̄ the Polyak-averaged targets;
* actor:    L_π = E[α log π(y|o) − min_i Q_i(o, y)] (+ ``bc_coef``·W2 proxy to the starting
  flow), y = squash(a^K) with gradients through all K steps; the critics are frozen for it;
* temperature: L_α = −log α · E[log π(y|o) + H̄], the target entropy H̄ = h·n with h the
  target **per action dim and per Gaussian step** (``target_entropy``) and n = (K + [c > 0])·Da
  Gaussian terms of the chain (a⁰ counts when it is random, c = ``initial_std``).

``target_entropy="auto"`` sets h = ½·log(2πe·σ_min·σ_max), the entropy of one Gaussian step
whose std is the geometric mean of the noise bounds: reachable by construction, since σ_φ
lives in [σ_min, σ_max] (SAC's −1 per dim is below a step's entropy for σ_min = 0.1,
½·log(2πe·0.01) = −0.88, so α would only shrink). log π includes the tanh correction, so
saturated actions lower the entropy and raise α.

Each gradient step checks its three losses and refuses to step on a non-finite one. The
learner reads top to bottom: construction, warm-up actions, then ``train``.

Under ``torchrun`` (:mod:`flowrl.distributed`) W ranks of E envs train what one process of W·E
envs would (:class:`~flowrl.algos.common.OffPolicyFlowLearner`): each rank fills its own replay
buffer, samples ``batch_size / W`` rows of each minibatch from it, and the gradients of actor,
critics and temperature are averaged over the ranks before clipping and stepping.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import polyak_update
from torch import Tensor
from torch.nn import functional as F

from flowrl import distributed
from flowrl.algos.common import WARMUPS, OffPolicyFlowLearner
from flowrl.policies.flow_sac import FlowSACPolicy

__all__ = ["WARMUPS", "FlowSAC"]


class FlowSAC(OffPolicyFlowLearner, OffPolicyAlgorithm):
    """SAC on a noise-injected flow actor (:class:`~flowrl.policies.FlowSACPolicy`).

    Args:
        policy: ``"FlowSACPolicy"``, the class, or a ready instance (e.g.
            ``FlowSACPolicy.from_pretrained("bc.pt", env.observation_space, env.action_space)``).
        env: Env, VecEnv or registered id.
        learning_rate: Adam learning rate of actor, critics and temperature (or a schedule).
        buffer_size: Replay buffer transitions.
        learning_starts: Env steps before the first gradient step.
        batch_size: Minibatch size.
        tau: Polyak coefficient of the target critics (θ̄ ← τθ + (1 − τ)θ̄).
        gamma: Discount.
        train_freq: Env steps (per env) between updates, or ``(n, "episode")``.
        gradient_steps: Gradient steps per update (−1: as many as env steps collected).
        ent_coef: Temperature α: ``"auto"`` (learned from 1), ``"auto_<init>"`` or a number.
        target_entropy: h, the target entropy **per action dim per Gaussian step** (the
            learned α drives the chain's entropy to h·(K + [c > 0])·Da); ``"auto"``:
            ½·log(2πe·σ_min·σ_max).
        target_update_interval: Gradient steps between target updates.
        critic_warmup_steps: First gradient steps that train only the critics (and α): a
            pretrained actor should not follow a critic that has not yet seen its behaviour
            (the on-policy core's ``critic_warmup_updates``, in gradient steps).
        bc_coef: Weight of the W2 proxy to the starting flow
            (:meth:`~flowrl.policies.FlowPolicyBase.bc_regularizer`; 0: off).
        max_grad_norm: Clip of the actor's gradient norm (None: no clipping; the norm is
            logged either way as ``flow/actor_grad_norm``).
        warmup: Actions before ``learning_starts``: ``"policy"`` — the flow's own stochastic
            chain (a BC start fills the buffer with its behaviour), ``"uniform"`` — uniform in
            the box (SB3's), ``"auto"`` — policy for a pretrained actor, else uniform.
        action_noise: SB3 action noise (rarely useful with a stochastic actor).
        replay_buffer_class: SB3 replay buffer class (default ``ReplayBuffer``).
        replay_buffer_kwargs: Its extra arguments.
        optimize_memory_usage: SB3's memory-efficient replay buffer.
        n_steps: n-step returns (SB3's).
        policy_kwargs: :class:`~flowrl.policies.FlowSACPolicy`'s arguments.
        stats_window_size: Episodes averaged in ``rollout/`` statistics.
        tensorboard_log: TensorBoard folder.
        verbose: 0 silent, 1 info.
        seed: Seed of python, numpy, torch and the env.
        device: Torch device.
        _init_setup_model: Build the networks now (SB3's load passes False).

    Under ``torchrun`` every rank builds the learner with the same arguments and its own E envs
    (seeded ``seed + rank·E``) and calls ``learn``: the ranks start from rank 0's weights,
    ``batch_size`` and ``buffer_size`` are global (each rank samples ``batch_size / W`` rows
    from its own buffer of ``buffer_size / W`` transitions), ``num_timesteps`` (hence
    ``learning_starts``, ``total_timesteps`` and ``gradient_steps=-1``) counts every rank's
    env steps, ``train_freq`` must count steps, and each gradient step averages the actor's,
    the critics' and log α's gradients over the ranks (before the actor's clip) in one
    all-reduce that also refuses the step on every rank if a loss is not finite on any. The
    copies stay bit-identical (checked after every ``train``); rank 0 alone runs callbacks,
    logs and saves, and its checkpoint is a single-process one.

    Raises:
        ValueError: Naming a bad argument; under torchrun also a ``batch_size`` the world size
            does not divide or a ``train_freq`` in episodes (on every rank).
    """

    policy_aliases = {"FlowSACPolicy": FlowSACPolicy}  # noqa: RUF012 (SB3's class attribute)
    policy: FlowSACPolicy
    policy_base = FlowSACPolicy
    replay_buffer: ReplayBuffer
    default_log_interval = 4  # episodes (SB3's SAC)

    def __init__(
        self,
        policy: str | type[FlowSACPolicy] | FlowSACPolicy,
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        buffer_size: int = 1_000_000,
        learning_starts: int = 100,
        batch_size: int = 256,
        tau: float = 0.005,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 1,
        gradient_steps: int = 1,
        ent_coef: str | float = "auto",
        target_entropy: str | float = "auto",
        target_update_interval: int = 1,
        critic_warmup_steps: int = 0,
        bc_coef: float = 0.0,
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
            target_update_interval=target_update_interval,
        )
        if isinstance(critic_warmup_steps, bool) or not (
            isinstance(critic_warmup_steps, (int, np.integer)) and critic_warmup_steps >= 0
        ):
            raise ValueError(
                f"critic_warmup_steps must be an integer >= 0, got {critic_warmup_steps!r}"
            )
        if not (isinstance(bc_coef, (int, float)) and bc_coef >= 0):
            raise ValueError(f"bc_coef must be >= 0, got {bc_coef!r}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")
        self.ent_coef = _check_ent_coef(ent_coef)
        self.target_entropy_per_term = _check_target_entropy(target_entropy)
        self.target_update_interval = target_update_interval
        self.critic_warmup_steps = int(critic_warmup_steps)
        self.bc_coef = float(bc_coef)
        self.max_grad_norm = max_grad_norm
        pretrained = isinstance(policy, FlowSACPolicy) or bool(
            (policy_kwargs or {}).get("pretrained")
        )
        self.warmup = self.resolve_warmup(warmup, pretrained)
        self.log_ent_coef: Tensor | None = None
        self.ent_coef_optimizer: torch.optim.Optimizer | None = None
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
            supported_action_spaces=None,  # check_spaces refuses others with a clear message
            support_multi_env=True,
        )
        if _init_setup_model:
            self._setup_model()

    # ================================================================== setup

    def _setup_model(self) -> None:
        self._setup_policy()
        self._convert_train_freq()
        self._check_world()
        self._make_replay_buffer()
        per_term = self.target_entropy_per_term
        if per_term == "auto":  # a Gaussian step whose std is the bounds' geometric mean
            bounds = self.policy.sigma_min * self.policy._sigma_max_init
            per_term = 0.5 * math.log(2 * math.pi * math.e * bounds)
        self.target_entropy = float(per_term) * self.entropy_terms()
        if isinstance(self.ent_coef, str):
            init = float(self.ent_coef.split("_")[1]) if "_" in self.ent_coef else 1.0
            self.log_ent_coef = torch.full(
                (1,), math.log(init), device=self.device, requires_grad=True
            )
            self.ent_coef_optimizer = torch.optim.Adam([self.log_ent_coef], lr=self.lr_schedule(1))
        else:
            self.ent_coef_tensor = torch.tensor(float(self.ent_coef), device=self.device)

    def _distributed_settings(self) -> dict[str, Any]:
        return {
            **super()._distributed_settings(),
            "critic_warmup_steps": self.critic_warmup_steps,
            "target_update_interval": self.target_update_interval,
            "learned_ent_coef": self.log_ent_coef is not None,
        }

    def entropy_terms(self) -> int:
        """n, the Gaussian terms of a chain: (K + [c > 0])·Da."""
        action_dim = self.action_space.shape[0]  # type: ignore[index]
        return (self.policy.num_steps + int(self.policy.initial_std > 0)) * action_dim

    # ================================================================== update

    def _temperature(self, log_prob: Tensor) -> tuple[Tensor, Tensor | None]:
        """α for this gradient step and, when it is learned, its loss."""
        if self.log_ent_coef is None:
            return self.ent_coef_tensor, None
        loss = -(self.log_ent_coef * (log_prob.float() + self.target_entropy).detach()).mean()
        return self.log_ent_coef.detach().exp(), loss

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        """``gradient_steps`` SAC steps on minibatches from the replay buffer.

        ``batch_size`` is the global minibatch: under torchrun this rank samples its share.
        """
        policy = self.policy
        policy.set_training_mode(True)
        optimizers = [policy.optimizer, policy.critic_optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers.append(self.ent_coef_optimizer)
        self._update_learning_rate(optimizers)
        actor_params = [p for g in policy.optimizer.param_groups for p in g["params"]]
        sync = distributed.GradientSync(
            p for opt in optimizers for g in opt.param_groups for p in g["params"]
        )
        batch_size = distributed.share(batch_size)
        stats: dict[str, list[float]] = {
            k: [] for k in ("actor", "critic", "ent_coef", "ent_coef_loss", "log_prob", "bc")
        }
        stats.update(grad_norm=[], q=[])
        for step in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
            discounts = data.discounts if data.discounts is not None else self.gamma

            actions_pi, log_prob = policy.action_log_prob(data.observations)
            alpha, alpha_loss = self._temperature(log_prob)
            with torch.no_grad():
                next_actions, next_log_prob = policy.action_log_prob(data.next_observations)
                next_q = policy.q_values(data.next_observations, next_actions, target=True)
                next_v = next_q.min(dim=0).values - alpha * next_log_prob.float()
                target_q = (
                    data.rewards.flatten()
                    + (1 - data.dones.flatten())
                    * (discounts.flatten() if isinstance(discounts, Tensor) else discounts)
                    * next_v
                )
            current_q = policy.q_values(data.observations, data.actions)
            critic_loss = 0.5 * sum(F.mse_loss(q, target_q) for q in current_q)

            # During the critic warm-up the actor's loss is neither needed nor computed.
            actor_on = self._n_updates + step >= self.critic_warmup_steps
            actor_loss = bc = None
            if actor_on:
                policy.critic.requires_grad_(False)  # the actor's loss reaches no critic
                q_pi = policy.q_values(data.observations, actions_pi).min(dim=0).values
                policy.critic.requires_grad_(True)
                actor_loss = (alpha * log_prob.float() - q_pi).mean()
                bc = (
                    policy.bc_regularizer(data.observations).mean()
                    if self.bc_coef > 0
                    else actor_loss.new_zeros(())
                )
                actor_loss = actor_loss + self.bc_coef * bc
            losses = {"critic": critic_loss, "actor": actor_loss, "ent_coef": alpha_loss}
            if not distributed.is_distributed():  # refused before any backward
                _refuse_non_finite(learner=self, **losses)

            # All three losses come from the same parameters (as in the original SAC code):
            # they are checked, differentiated, and only then applied.
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            if alpha_loss is not None:
                alpha_loss.backward()
                stats["ent_coef_loss"].append(alpha_loss.item())
            critic_loss.backward()  # type: ignore[union-attr]
            if actor_loss is not None:
                actor_loss.backward()
            # Under torchrun: the ranks' mean gradients, and the NaN refusal of any rank.
            self._average_gradients(sync, losses)
            clip = self.max_grad_norm if self.max_grad_norm is not None else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(actor_params, clip)
            for optimizer in optimizers:
                if actor_on or optimizer is not policy.optimizer:
                    optimizer.step()

            if step % self.target_update_interval == 0:
                polyak_update(
                    policy.critic.parameters(), policy.critic_target.parameters(), self.tau
                )
            stats["critic"].append(critic_loss.item())  # type: ignore[union-attr]
            if actor_loss is not None and bc is not None:
                stats["actor"].append(actor_loss.item())
                stats["bc"].append(bc.item())
            stats["ent_coef"].append(float(alpha))
            stats["log_prob"].append(float(log_prob.detach().mean()))
            stats["grad_norm"].append(float(grad_norm))
            stats["q"].append(float(current_q.detach().mean()))
        self._n_updates += gradient_steps
        self._check_in_sync(self.log_ent_coef)
        self._record(stats)

    def _record(self, stats: dict[str, list[float]]) -> None:
        mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/ent_coef", mean(stats["ent_coef"]))
        self.logger.record("train/actor_loss", mean(stats["actor"]))
        self.logger.record("train/critic_loss", mean(stats["critic"]))
        self.logger.record("train/bc_loss", mean(stats["bc"]))
        self.logger.record("train/q_mean", mean(stats["q"]))
        self.logger.record("train/learning_rate", self.policy.optimizer.param_groups[0]["lr"])
        if stats["ent_coef_loss"]:
            self.logger.record("train/ent_coef_loss", mean(stats["ent_coef_loss"]))
        self.logger.record("train/neg_log_prob_mean", -mean(stats["log_prob"]))
        self.logger.record("train/target_entropy", self.target_entropy)
        self.logger.record("flow/actor_grad_norm", mean(stats["grad_norm"]))
        self.logger.record(
            "train/critic_warmup", float(self._n_updates <= self.critic_warmup_steps)
        )
        self.logger.record("flow/num_steps", self.policy.num_steps)
        self.logger.record("flow/gated", int(self.policy.actor.config.gated))

    # ================================================================== SB3 plumbing

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "log_ent_coef", "ent_coef_tensor"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts = ["policy", "policy.optimizer", "policy.critic_optimizer"]
        if self.ent_coef_optimizer is not None:
            return [*state_dicts, "ent_coef_optimizer"], ["log_ent_coef"]
        return state_dicts, ["ent_coef_tensor"]


# ---------------------------------------------------------------------- argument checks


def check_off_policy_args(
    *,
    learning_rate: float | Schedule,
    buffer_size: int,
    learning_starts: int,
    batch_size: int,
    tau: float,
    gamma: float,
    gradient_steps: int,
    target_update_interval: int,
) -> None:
    """Refuse replay-buffer settings that would train nothing or something else than asked.

    Raises:
        ValueError: Naming the argument, its value and the valid range.
    """
    if not callable(learning_rate) and not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0 (or a schedule), got {learning_rate}")
    for name, value, low in (
        ("buffer_size", buffer_size, 1),
        ("learning_starts", learning_starts, 0),
        ("batch_size", batch_size, 1),
        ("target_update_interval", target_update_interval, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if isinstance(gradient_steps, bool) or not isinstance(gradient_steps, (int, np.integer)):
        raise ValueError(f"gradient_steps must be an integer, got {gradient_steps!r}")
    if gradient_steps == 0 or gradient_steps < -1:
        raise ValueError(
            f"gradient_steps must be >= 1, or -1 (as many as env steps), got {gradient_steps}"
        )
    if not 0 < tau <= 1:
        raise ValueError(f"tau (the Polyak coefficient) must lie in (0, 1], got {tau}")
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma (the discount) must lie in (0, 1], got {gamma}")


def _check_ent_coef(ent_coef: str | float) -> str | float:
    """``"auto"``, ``"auto_<init>"`` with init > 0, or a number >= 0."""
    if isinstance(ent_coef, str):
        if ent_coef == "auto":
            return ent_coef
        if ent_coef.startswith("auto_"):
            try:
                init = float(ent_coef[5:])
            except ValueError:
                init = float("nan")
            if init > 0:
                return ent_coef
        try:
            ent_coef = float(ent_coef)
        except ValueError:
            raise ValueError(
                f"ent_coef must be 'auto', 'auto_<init>' (init > 0) or a number >= 0, "
                f"got {ent_coef!r}"
            ) from None
    if not (isinstance(ent_coef, (int, float)) and ent_coef >= 0):
        raise ValueError(f"ent_coef must be >= 0, got {ent_coef!r}")
    return float(ent_coef)


def _check_target_entropy(target: str | float) -> float | str:
    """A finite number, or ``"auto"`` (resolved when the policy exists)."""
    if target == "auto":
        return target
    try:
        value = float(target)
    except (TypeError, ValueError):
        raise ValueError(
            f"target_entropy must be 'auto' or a number (per action dim per chain step), "
            f"got {target!r}"
        ) from None
    if not math.isfinite(value):
        raise ValueError(f"target_entropy must be finite, got {target!r}")
    return value


def _refuse_non_finite(*, learner: FlowSAC, **losses: Tensor | None) -> None:
    """Raise before any step when a loss is NaN or infinite (nothing is updated)."""
    for name, loss in losses.items():
        if loss is not None and not torch.isfinite(loss):
            values = ", ".join(
                f"{key} {float(value):.4g}" for key, value in losses.items() if value is not None
            )
            raise FloatingPointError(
                f"{type(learner).__name__} {name} loss is {float(loss)} ({values}); the update "
                "was not applied. Check rewards/observations for NaN or extreme values, or "
                "lower the learning rate."
            )
