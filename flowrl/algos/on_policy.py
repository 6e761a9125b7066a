"""The on-policy core: one PPO update for every flow and diffusion policy-gradient learner.

A learner (``ReinFlow``, ``PolicyFlow``, …) subclasses :class:`OnPolicyCore` and defines
only what its paper changes:

(a) what one rollout step stores beside SB3's fields — :meth:`~OnPolicyCore._rollout_fields`
    (or a whole buffer, :meth:`~OnPolicyCore._make_buffer`) and :meth:`~OnPolicyCore._act`;
(b) its per-sample log-ratio on a minibatch — :meth:`~OnPolicyCore._policy_terms`, which
    also returns
(c) its extra loss terms (entropy estimate, regularizers);

plus :meth:`~OnPolicyCore._score_old`, the rollout policy's quantities scored in the update's
minibatch layout. Everything else lives here, once: rollout collection (time-limit bootstrap,
torch-native envs), SB3's GAE, re-scoring the rollout before the first step, the check that
the first minibatch's ratio is 1, the clipped surrogate, entropy control (Clip-Cov/KL-Cov,
:mod:`flowrl.algos.entropy_control`), the W2 regularizer towards the pretrained flow, the KL
stop, critic warm-up and ``critic_full_epochs``, the value loss, the NaN refusal and the
TensorBoard record.

Under ``torchrun`` (:mod:`flowrl.distributed`) every learner runs data-parallel with no change
to its code: each rank collects its own rollout from its own envs, ``batch_size`` is the global
minibatch (each rank takes ``batch_size / world_size`` rows of its rollout), ``num_timesteps``
counts every rank's env steps, gradients are averaged over ranks before clipping, and every
decision that steers the loop is taken collectively: the KL stop on the ranks' mean KL, the
first-minibatch ratio check and the sampler check on their largest deviation, the NaN refusal
if any rank's loss is not finite, a callback's stop request from any rank. Advantages are
normalized with the statistics of the global minibatch, so an update of W ranks of E envs
follows the gradient that one process of W·E envs would on the same rows.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import torch
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import FloatSchedule, explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch import Tensor

from flowrl import distributed
from flowrl.algos.buffers import FieldRolloutBuffer, FieldRolloutSamples
from flowrl.algos.common import FlowLearner
from flowrl.algos.entropy_control import ENTROPY_CONTROLS, covariance_terms, surrogate_loss
from flowrl.compile import check_compile
from flowrl.policies.base import FlowPolicyBase

__all__ = ["OnPolicyCore", "PolicyTerms", "RolloutStep", "check_on_policy_args", "torch_face"]

SelfCore = TypeVar("SelfCore", bound="OnPolicyCore")


def check_on_policy_args(
    *,
    n_steps: int,
    batch_size: int,
    n_epochs: int,
    gamma: float,
    gae_lambda: float,
    n_envs: int | None = None,
    warn: bool = True,
) -> None:
    """Refuse PPO-style settings that would train nothing or something else than asked.

    Shared by every on-policy learner (and by the pipeline for SB3's PPO).

    Args:
        n_steps: Steps per env per rollout.
        batch_size: Minibatch rows.
        n_epochs: Passes over each rollout.
        gamma: Discount.
        gae_lambda: GAE's lambda.
        n_envs: Training envs (None: unknown yet; the rollout-size checks are skipped).
        warn: Warn, as SB3's PPO does, when the minibatch does not divide the rollout.

    Raises:
        ValueError: Naming the argument, its value and the valid range.
    """
    for name, value in (("n_steps", n_steps), ("n_epochs", n_epochs)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 2:
        raise ValueError(
            f"batch_size must be an integer > 1 (advantages are normalized per minibatch), "
            f"got {batch_size!r}"
        )
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma (the discount) must lie in (0, 1], got {gamma}")
    if not 0 <= gae_lambda <= 1:
        raise ValueError(f"gae_lambda must lie in [0, 1], got {gae_lambda}")
    if n_envs is None:
        return
    rollout = n_steps * n_envs
    if batch_size > rollout:
        raise ValueError(
            f"batch_size={batch_size} is larger than the rollout (n_steps * n_envs = "
            f"{n_steps} * {n_envs} = {rollout}): lower batch_size or raise n_steps"
        )
    if warn and rollout % batch_size:
        warnings.warn(
            f"batch_size={batch_size} does not divide the rollout (n_steps * n_envs = "
            f"{rollout}): each epoch ends with a truncated minibatch of "
            f"{rollout % batch_size} rows. Choose a batch size that divides it.",
            stacklevel=3,
        )


def torch_face(env: VecEnv) -> Any | None:
    """The torch-native face of ``env``, or None.

    E.g. :class:`flowrl.envs.mjx.MJXVecEnv`'s ``env.torch``.

    Only the outermost env counts: a wrapper such as ``VecNormalize`` forwards attribute
    lookups to the env inside, and going around it would skip its normalization.
    """
    face = vars(env).get("torch")
    return face if callable(getattr(face, "step", None)) else None


class RolloutStep(NamedTuple):
    """What a learner's policy gives for one step of E envs.

    Attributes:
        env_actions: (E, Da) actions in the env's units (clipped to its box).
        actions: (E, Da) actions as the policy produced them (SB3's ``actions`` field).
        values: (E,) values.
        log_probs: (E,) log-probabilities (float64).
        fields: The learner's buffer fields, each (E, *shape).
    """

    env_actions: Tensor
    actions: Tensor
    values: Tensor
    log_probs: Tensor
    fields: dict[str, Tensor]


@dataclass
class PolicyTerms:
    """A learner's side of one minibatch of M samples.

    Attributes:
        log_ratio: log π_θ/π_old with gradient (float64): (M,), one ratio per sample, or
            (M, N), N ratios per sample (FPO++'s one per (τ, ε) pair, DPPO's one per
            denoising step), each clipped on its own with its sample's advantage; the
            surrogate is their mean.
        log_prob: log π_θ per sample, (M,): the quantity whose covariance with the advantage
            entropy control reads, and whose negative mean is logged as an entropy estimate.
        entropy: Entropy bonus per sample, (M,); its mean enters with ``ent_coef``.
        values: V(o) from the same pass, (M,).
        losses: Named extra losses ``{name: (coef, scalar)}``, added to the actor's loss in
            this order and logged as ``train/<name>_loss``.
        advantage_weights: (N,) factors of the advantage per column of an (M, N)
            ``log_ratio`` (DPPO's γ_denoise discount across denoising steps), applied after
            the advantages are normalized; None: 1.
        extras: What a learner whose policy loss is not PPO's surrogate needs in its
            :meth:`OnPolicyCore._policy_loss` (NFT's velocities and targets).
    """

    log_ratio: Tensor
    log_prob: Tensor
    entropy: Tensor
    values: Tensor
    losses: dict[str, tuple[float, Tensor]] = field(default_factory=dict)
    advantage_weights: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)


class OnPolicyCore(FlowLearner, OnPolicyAlgorithm):
    """PPO on a flow policy's per-sample log-ratio: the base of every on-policy learner.

    Args:
        policy: A policy alias, class, or ready instance of the learner's ``policy_base``.
        env: Env, VecEnv or registered id.
        learning_rate: Actor learning rate or schedule.
        critic_learning_rate: Value-network learning rate or schedule (a callable of the
            remaining progress, 1 → 0, as SB3's ``learning_rate``).
        n_steps: Steps per env per rollout.
        batch_size: Minibatch size.
        n_epochs: Passes over each rollout.
        gamma: Discount.
        gae_lambda: GAE λ.
        clip_range: PPO ratio clip ε (float or schedule).
        clip_range_vf: Value clip (None disables).
        normalize_advantage: Standardise advantages per minibatch.
        ent_coef: Weight of the entropy bonus.
        vf_coef: Weight of the value loss.
        bc_coef: Weight of the W2 regularizer towards the pretrained flow (0 disables it).
        max_grad_norm: Gradient-norm clip, applied to actor and critic separately.
        target_kl: Stop the actor's epochs once approx. KL exceeds 1.5·target_kl.
        critic_full_epochs: When target_kl stops the actor, the value net still trains for
            the rest of the ``n_epochs`` (False: it stops with the actor, as in SB3's PPO).
            The KL stop guards the policy's trust region; the value regression needs no
            such guard, and cutting it short leaves the critic under-fitted.
        critic_warmup_updates: First updates that train only the value net: a pretrained
            actor should not follow advantages from a critic that has not seen it yet.
        log_ratio_clip: Clamp the log-ratio to [−c, c] before exponentiating (None: off).
        entropy_control: None, ``"clip_cov"`` or ``"kl_cov"``
            (:mod:`flowrl.algos.entropy_control`).
        cov_fraction: Share of each minibatch that entropy control acts on (at least one
            sample). None: the paper's value, 2e-4 for Clip-Cov, 2e-3 for KL-Cov.
        clip_cov_bounds: Clip-Cov acts only on covariance terms inside (lower, upper).
        kl_cov_coef: β of KL-Cov's |log ratio| penalty.
        ratio_check_tol: Max |ratio − 1| allowed on the first minibatch of every update.
        sampler_check_tol: Max difference allowed between the rollout's log-probs and the
            same samples re-scored before the update, relative to max(1, |log p|) (float32
            round-off of the networks, which depends on batch size, stays below ~1e-5 of
            that scale; a wrong time grid or K gives differences of order 1).
        compile: ``torch.compile`` the policy's hot paths (:mod:`flowrl.compile`): True or a
            mode name; False: eager; None (default): as the policy was built
            (``policy_kwargs={"compile": ...}``). Saved with the model.
        stats_window_size: Episodes averaged in ``rollout/`` statistics.
        tensorboard_log: TensorBoard folder (None: no logging).
        policy_kwargs: Policy constructor arguments.
        verbose: 0 silent, 1 info.
        seed: Seed of python, numpy, torch and the env.
        device: Torch device.
        _init_setup_model: Build the networks now (SB3's load passes False).
    """

    policy: FlowPolicyBase
    rollout_buffer: FieldRolloutBuffer
    # Each learner names the policy class it takes (a checkpoint of another is refused).
    policy_base: ClassVar[type[FlowPolicyBase]]
    extra_loss_names: ClassVar[tuple[str, ...]] = ()  # logged even in updates that skip them
    float64_fields: ClassVar[tuple[str, ...]] = ()  # buffer fields kept in float64

    def __init__(
        self,
        policy: str | type[FlowPolicyBase] | FlowPolicyBase,
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        critic_learning_rate: float = 1e-3,
        n_steps: int = 2048,
        batch_size: int = 64,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: float | Schedule = 0.2,
        clip_range_vf: float | Schedule | None = None,
        normalize_advantage: bool = True,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        bc_coef: float = 0.0,
        max_grad_norm: float = 0.5,
        target_kl: float | None = None,
        critic_full_epochs: bool = False,
        critic_warmup_updates: int = 0,
        log_ratio_clip: float | None = None,
        entropy_control: str | None = None,
        cov_fraction: float | None = None,
        clip_cov_bounds: tuple[float, float] = (1.0, 5.0),
        kl_cov_coef: float = 1.0,
        ratio_check_tol: float = 1e-6,
        sampler_check_tol: float = 1e-3,
        compile: bool | str | None = None,  # noqa: A002 (torch.compile's name)
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        super().__init__(
            policy,  # type: ignore[arg-type]
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=False,
            sde_sample_freq=-1,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
        )
        check_on_policy_args(
            n_steps=n_steps,
            batch_size=batch_size,
            n_epochs=n_epochs,
            gamma=gamma,
            gae_lambda=gae_lambda,
            # Under torchrun the rollout is every rank's: W·n_envs envs (batch_size is global).
            n_envs=self.n_envs * distributed.world_size() if self.env is not None else None,
        )
        for name, value in (
            ("learning_rate", learning_rate),
            ("critic_learning_rate", critic_learning_rate),
            ("clip_range", clip_range),
        ):
            if not callable(value) and not value > 0:
                raise ValueError(f"{name} must be > 0 (or a schedule), got {value}")
        if target_kl is not None and not target_kl > 0:
            raise ValueError(f"target_kl must be > 0 or None, got {target_kl}")
        if critic_warmup_updates < 0:
            raise ValueError(f"critic_warmup_updates must be >= 0, got {critic_warmup_updates}")
        if entropy_control is not None and entropy_control not in ENTROPY_CONTROLS:
            raise ValueError(
                f"entropy_control must be None or one of {ENTROPY_CONTROLS}, "
                f"got {entropy_control!r}"
            )
        if cov_fraction is not None and not 0 < cov_fraction <= 1:
            raise ValueError(f"cov_fraction must lie in (0, 1], got {cov_fraction}")
        lower, upper = clip_cov_bounds
        if not lower < upper:
            raise ValueError(
                f"clip_cov_bounds must be (lower, upper) with lower < upper, got {clip_cov_bounds}"
            )
        self.critic_learning_rate = critic_learning_rate
        self.batch_size = batch_size
        self.n_epochs = n_epochs
        self.clip_range = clip_range
        self.clip_range_vf = clip_range_vf
        self.normalize_advantage = normalize_advantage
        self.bc_coef = bc_coef
        self.target_kl = target_kl
        self.critic_full_epochs = critic_full_epochs
        self.critic_warmup_updates = critic_warmup_updates
        self._updates_done = 0
        self.log_ratio_clip = log_ratio_clip
        self.entropy_control = entropy_control
        self.cov_fraction = cov_fraction
        self.clip_cov_bounds = (float(lower), float(upper))
        self.kl_cov_coef = kl_cov_coef
        self.ratio_check_tol = ratio_check_tol
        self.sampler_check_tol = sampler_check_tol
        if compile is not None:
            check_compile(compile)
        self.compile = compile
        if _init_setup_model:
            self._setup_model()

    # ================================================================== what a learner defines

    def _rollout_fields(self) -> dict[str, tuple[int, ...]]:
        """(a) Per-step shapes of the buffer fields beside SB3's (read by ``_make_buffer``)."""
        raise NotImplementedError

    def _act(self, obs: Tensor) -> RolloutStep:
        """(a) One rollout step of the policy (called under ``torch.inference_mode``)."""
        raise NotImplementedError

    def _score_old(self, batch: FieldRolloutSamples) -> dict[str, Tensor]:
        """The rollout policy's quantities for a minibatch, before any update.

        Returns ``{"log_probs": (M,), <field>: (M, *shape), …}``, written back into the
        buffer, so that the first minibatch of the update is scored on exactly the same rows
        in exactly the same layout (its ratio is then 1 to the last bit).
        """
        raise NotImplementedError

    def _policy_terms(self, batch: FieldRolloutSamples) -> PolicyTerms:
        """(b) and (c): the per-sample log-ratio and extra losses of a minibatch."""
        raise NotImplementedError

    def _before_rollout(self) -> None:
        """Learner-specific changes between updates (e.g. a noise schedule)."""

    def _first_minibatch_stats(self, batch: FieldRolloutSamples) -> dict[str, float]:
        """Scalars logged from the update's first minibatch (e.g. mean σ)."""
        return {}

    def _record_extra(self) -> None:
        """Learner-specific scalars written at the end of each update."""

    # ================================================================== setup

    def _setup_model(self) -> None:
        self._check_world()
        self._setup_policy()
        if self.compile is not None:
            self.policy.set_compile(self.compile)
        self._check_policy()
        self.critic_lr_schedule = FloatSchedule(self.critic_learning_rate)
        self.clip_range = FloatSchedule(self.clip_range)
        if self.clip_range_vf is not None:
            self.clip_range_vf = FloatSchedule(self.clip_range_vf)
        self.rollout_buffer = self._make_buffer()

    def _make_buffer(self) -> FieldRolloutBuffer:
        return FieldRolloutBuffer(
            self.n_steps,
            self.observation_space,
            self.action_space,
            self._rollout_fields(),
            device=self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
            float64_fields=self.float64_fields,
        )

    def _check_policy(self) -> None:
        """Learner-specific checks of the built policy against the learner's options."""

    def _check_world(self) -> None:
        """Refuse a world size that does not split the global minibatch into equal shares.

        (A minibatch larger than the rollout of all ranks is refused with the other rollout
        checks, where ``n_envs`` counts every rank's envs.)

        Raises:
            ValueError: On every rank (each checks the same numbers).
        """
        distributed.share(self.batch_size, "batch_size", "minibatch")

    @property
    def _local_batch_size(self) -> int:
        """This rank's rows of each minibatch (``batch_size`` in a single process)."""
        return distributed.share(self.batch_size)

    def _distributed_settings(self) -> dict[str, Any]:
        return {
            "n_envs": self.n_envs,
            "n_steps": self.n_steps,
            "batch_size": self.batch_size,
            "n_epochs": self.n_epochs,
            "critic_warmup_updates": self.critic_warmup_updates,
        }

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy", "policy.optimizer", "policy.critic_optimizer"], []

    def _excluded_save_params(self) -> list[str]:
        # The torch-native env's last observation tensor (it may alias a JAX buffer) is
        # rollout state like the env itself: it is not pickled into checkpoints.
        return [*super()._excluded_save_params(), "_torch_obs"]

    # ================================================================== rollout

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """Fill the buffer with ``n_rollout_steps`` steps of every env (fields included)."""
        assert self._last_obs is not None, "No previous observation was provided"
        assert isinstance(rollout_buffer, FieldRolloutBuffer)
        self.policy.set_training_mode(False)
        # SB3 updates the progress after the rollout; refresh it here so that a schedule read
        # before the rollout (and a new learn() call) sees the current value.
        self._update_current_progress_remaining(self.num_timesteps, self._total_timesteps)
        self._before_rollout()
        rollout_buffer.reset()
        callback.on_rollout_start()
        n_steps = 0
        torch_env = torch_face(env)
        stopped = False
        start = self.num_timesteps
        while n_steps < n_rollout_steps:
            with torch.inference_mode():
                step = self._act(self._last_obs_tensor())
            if torch_env is None:
                new_obs, rewards, dones, infos = env.step(step.env_actions.cpu().numpy())
            else:
                new_obs, rewards, dones, infos = self._torch_env_step(torch_env, step.env_actions)
            self.num_timesteps += env.num_envs * distributed.world_size()
            callback.update_locals(locals())
            if not callback.on_step():
                if not distributed.is_distributed():
                    return False
                stopped = True  # agreed with the other ranks at the end of their rollouts
                break
            self._update_info_buffer(infos, dones)
            n_steps += 1
            # A time-limit truncation is not a terminal state: bootstrap with V(s_T).
            for idx, done in enumerate(dones):
                terminal_obs = infos[idx].get("terminal_observation")
                if (
                    done
                    and terminal_obs is not None
                    and infos[idx].get("TimeLimit.truncated", False)
                ):
                    with torch.inference_mode():
                        terminal_value = self.policy.predict_values(
                            self.policy.obs_to_tensor(terminal_obs)[0]  # type: ignore[arg-type]
                        )[0]
                    rewards[idx] += self.gamma * float(terminal_value)
            rollout_buffer.add_step(
                self._last_obs,  # type: ignore[arg-type]
                step.actions,
                rewards,
                self._last_episode_starts,  # type: ignore[arg-type]
                step.values,
                step.log_probs,
                step.fields,
            )
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones
        if distributed.is_distributed():
            agreed = distributed.all_reduce(
                [float(stopped), float((n_steps + stopped) * env.num_envs)],
                "sum",
                "agreeing whether a callback stopped training",
            )
            if agreed[0] > 0:  # every rank stops, counting the steps every rank took
                self.num_timesteps = start + int(agreed[1])
                return False
            distributed.sync_vec_normalize(self.get_vec_normalize_env())
        with torch.inference_mode():
            values = self.policy.predict_values(self._last_obs_tensor())
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def _last_obs_tensor(self) -> Tensor:
        """The policy's input for ``self._last_obs``.

        The env's own tensor when the last step went through a torch-native env (no numpy
        round trip), else a conversion of the numpy observation.
        """
        cached = getattr(self, "_torch_obs", None)
        if cached is not None and cached[0] is self._last_obs:
            return cached[1].to(self.device)
        return obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]

    def _torch_env_step(self, torch_env: Any, actions: Tensor):
        """One step through a torch-native env; returns SB3's (obs, rewards, dones, infos).

        The observation tensor is kept for the next policy call; the numpy arrays (views on
        CPU) feed SB3's buffer, callbacks and episode statistics.
        """
        obs, reward, _, truncated, info = torch_env.step(actions)
        dones, infos = torch_env.sb3_infos(truncated, info)
        new_obs = obs.detach().cpu().numpy()
        self._torch_obs = (new_obs, obs)
        # A copy: the truncation bootstrap adds to the rewards in place.
        return new_obs, reward.detach().cpu().numpy().copy(), dones, infos

    # ================================================================== update

    def _refresh_old_log_probs(self, indices: np.ndarray) -> float:
        """Re-score the rollout with the unchanged policy, in the first epoch's layout.

        The sampler already returned exact log-probs, but float32 network outputs differ in
        their last bits between the rollout's batch of E rows and a minibatch of M rows (up
        to ~5e-6 in log p, measured), which would put the first-minibatch ratio 1 ± 1e-5.
        Scoring the same rows in the same minibatches as epoch 0 makes that ratio exactly 1
        unless something really changed, and comparing against the sampler's values catches
        a sampler/likelihood mismatch (a different grid, K or noise model).

        Returns:
            Max |log p_sampler − log p_recomputed| / max(1, |log p_sampler|) over the buffer
            (relative above 1: FPO's and NFT's flow-matching ELBOs grow with the policy's
            residuals, and so does the float32 round-off of a re-scoring).
        """
        buffer = self.rollout_buffer
        buffer.flatten()
        sampled = buffer.log_probs.copy()
        size = self._local_batch_size
        with torch.no_grad():
            for batch, start in zip(
                buffer.get(size, indices), range(0, len(indices), size), strict=True
            ):
                buffer.write_rows(indices[start : start + size], self._score_old(batch))
        scale = np.maximum(1.0, np.abs(sampled))
        error = float((np.abs(buffer.log_probs - sampled) / scale).max())
        error = float(distributed.all_reduce([error], "max", "the sampler check")[0])
        if not error <= self.sampler_check_tol:
            raise RuntimeError(
                f"the sampler's log-probs and the re-scored ones differ by up to {error:.3g} "
                f"(relative to max(1, |log p|); tolerance {self.sampler_check_tol:g}) on the "
                "same samples with the same weights: sampling and likelihood disagree. Check "
                "that both use THE time grid (flowrl.flow.time_grid) with the same K and the "
                "same noise model, that no dropout is active, and that the observation "
                "normalizer did not change during the rollout."
            )
        return error

    def _check_first_ratio(self, ratio: Tensor) -> float:
        """Raise unless the first minibatch's ratio is 1: nothing has changed since the rollout."""
        deviation = float((ratio - 1).abs().max())
        deviation = float(distributed.all_reduce([deviation], "max", "the ratio check")[0])
        if not deviation <= self.ratio_check_tol:
            raise RuntimeError(
                f"PPO ratio on the first minibatch deviates from 1 by {deviation:.3g} "
                f"(tolerance {self.ratio_check_tol:g}) before any update. The update scores "
                "samples differently from the rollout: check that the policy has no dropout or "
                "batch-norm in training mode, that its weights and observation normalizer "
                "were not changed between rollout and update, and that the likelihood uses "
                "THE time grid."
            )
        return deviation

    def train(self) -> None:
        """One PPO update over the rollout buffer."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        critic_lr = self.critic_lr_schedule(self._current_progress_remaining)
        for group in self.policy.critic_optimizer.param_groups:
            group["lr"] = critic_lr
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        clip_range_vf = (
            self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]
            if self.clip_range_vf is not None
            else None
        )
        losses = ("pg", "value", "entropy", "bc", *self.extra_loss_names)
        diagnostics = ("clip", "kl", "ratio", "neg_log_prob", "cov", "cov_max", "selected")
        stats: dict[str, list[float]] = {k: [] for k in (*losses, *diagnostics)}
        first_deviation = first_ratio = float("nan")
        first_stats: dict[str, float] = {}
        rows = self.rollout_buffer.buffer_size * self.n_envs
        first_order = np.random.permutation(rows)
        sampler_error = self._refresh_old_log_probs(first_order)
        batch_size = self._local_batch_size
        sync = distributed.GradientSync(
            [p for opt in self._optimizers() for g in opt.param_groups for p in g["params"]]
        )
        # The actor steps unless the critic is warming up or target_kl has stopped it; the
        # critic steps on every minibatch of every epoch the loop runs.
        actor_on = self._updates_done >= self.critic_warmup_updates
        self._updates_done += 1
        kl_limit = None if self.target_kl is None else 1.5 * self.target_kl
        stop = False
        epoch = 0
        for epoch in range(self.n_epochs):  # noqa: B007 (logged after the loop)
            order = first_order if epoch == 0 else np.random.permutation(rows)
            adv_stats = self._global_advantage_stats(order, batch_size)
            for batch_index, batch in enumerate(self.rollout_buffer.get(batch_size, order)):
                first = epoch == 0 and batch_index == 0
                # The first minibatch is scored even when the actor is off: its ratio check
                # (ratio = 1 before any step) guards every update.
                approx_kl = 0.0
                if actor_on or first:
                    actor_loss, values, approx_kl, ratio = self._actor_loss(
                        batch,
                        clip_range,
                        stats,
                        None if adv_stats is None else adv_stats[batch_index],
                    )
                    if first:
                        first_deviation = self._check_first_ratio(ratio)
                        first_ratio = float(ratio.mean())
                        with torch.no_grad():
                            first_stats = self._first_minibatch_stats(batch)
                else:
                    values = self.policy.predict_values(batch.observations).flatten()

                if clip_range_vf is not None:
                    values = batch.old_values + (values - batch.old_values).clamp(
                        -clip_range_vf, clip_range_vf
                    )
                value_loss = torch.nn.functional.mse_loss(batch.returns, values)
                stats["value"].append(value_loss.item())
                loss = self.vf_coef * value_loss
                if actor_on:
                    loss = loss + actor_loss
                self.policy.optimizer.zero_grad(set_to_none=True)
                self.policy.critic_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                # One all-reduce averages the gradients over ranks and carries what the
                # decisions below need, so that every rank takes the same ones.
                value_bad, actor_bad, kl_sum = sync(
                    [
                        float(not torch.isfinite(value_loss)),
                        float(actor_on and not torch.isfinite(actor_loss)),
                        approx_kl,
                    ],
                    what="averaging the update's gradients",
                ).tolist()
                approx_kl = kl_sum / distributed.world_size()
                if actor_on and kl_limit is not None and approx_kl > kl_limit:
                    actor_on = False  # the actor's gradients of this minibatch are dropped
                    if self.verbose >= 1:
                        print(f"Early stopping at epoch {epoch} (approx. KL {approx_kl:.4f})")
                    if not self.critic_full_epochs:
                        stop = True
                        break
                if value_bad or (actor_on and actor_bad):
                    where = " on some rank" if distributed.is_distributed() else ""
                    raise FloatingPointError(
                        f"{type(self).__name__} loss is not finite{where} (here: value "
                        f"{value_loss.item()}, policy terms "
                        f"{actor_loss.item() if actor_on else 'off'}); the update was not "
                        "applied. Check rewards/observations for NaN or extreme values, lower "
                        "the learning rate, or set log_ratio_clip."
                    )
                if actor_on:
                    torch.nn.utils.clip_grad_norm_(
                        [p for g in self.policy.optimizer.param_groups for p in g["params"]],
                        self.max_grad_norm,
                    )
                    self.policy.optimizer.step()
                torch.nn.utils.clip_grad_norm_(
                    self.policy.value_net.parameters(), self.max_grad_norm
                )
                self.policy.critic_optimizer.step()
            if stop:
                break
        self._n_updates += epoch + 1
        distributed.check_in_sync(self.policy, "the policy's weights after the update")
        self._record(stats, clip_range, first_ratio, first_deviation, first_stats)
        self.logger.record("flow/sampler_log_prob_max_error", sampler_error)

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        """The update's optimizers (their parameters' gradients are averaged over ranks)."""
        return [self.policy.optimizer, self.policy.critic_optimizer]

    def _global_advantage_stats(
        self, order: np.ndarray, batch_size: int
    ) -> list[tuple[float, float]] | None:
        """(mean, std) of the advantages of each global minibatch of an epoch (None: 1 rank).

        Minibatch i of the epoch is the union of every rank's i-th share; one all-reduce of
        (count, Σa, Σa²) per minibatch gives its statistics, so advantages are normalized as
        one process holding all ranks' rows would normalize them (std with Bessel's
        correction, as ``Tensor.std``).
        """
        if not (distributed.is_distributed() and self.normalize_advantage):
            return None
        adv = self.rollout_buffer.advantages.reshape(-1)[order].astype(np.float64)
        sums = [
            (len(chunk), chunk.sum(), np.square(chunk).sum())
            for chunk in (adv[i : i + batch_size] for i in range(0, len(adv), batch_size))
        ]
        total = distributed.all_reduce(
            np.asarray(sums).ravel(), "sum", "normalizing the advantages"
        ).reshape(-1, 3)
        out = []
        for n, s, q in total.tolist():
            mean = s / n
            var = max(q - n * mean * mean, 0.0) / max(n - 1, 1)
            out.append((mean, var**0.5))
        return out

    def _clip_log_ratio(self, log_ratio: Tensor) -> Tensor:
        """The log-ratio clamped to [−c, c], c = ``log_ratio_clip`` (unchanged if None)."""
        if self.log_ratio_clip is None:
            return log_ratio
        return log_ratio.clamp(-self.log_ratio_clip, self.log_ratio_clip)

    def _actor_loss(
        self,
        batch: FieldRolloutSamples,
        clip_range: float,
        stats: dict[str, list[float]],
        advantage_stats: tuple[float, float] | None = None,
    ) -> tuple[Tensor, Tensor, float, Tensor]:
        """The actor's side of one minibatch: surrogate, entropy and the learner's terms.

        Appends this minibatch's policy statistics to ``stats``. ``advantage_stats``: the
        (mean, std) to normalize the advantages with (the global minibatch's under
        torchrun); None: this minibatch's own.

        Returns:
            ``(actor_loss (), values (M,), approx_kl, ratio (M,) detached)``.
        """
        terms = self._policy_terms(batch)
        log_ratio = self._clip_log_ratio(terms.log_ratio)
        ratio = torch.exp(log_ratio)
        advantages = batch.advantages
        if advantage_stats is not None:
            mean, std = advantage_stats
            advantages = (advantages - mean) / (std + 1e-8)
        elif self.normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        cov = covariance_terms(terms.log_prob, advantages)
        pg_loss, selected = self._policy_loss(terms, advantages, ratio, log_ratio, clip_range, cov)
        entropy_loss = -terms.entropy.mean()
        losses = dict(terms.losses)
        losses["bc"] = (
            self.bc_coef,
            self.policy.bc_regularizer(batch.observations).mean()
            if self.bc_coef > 0
            else log_ratio.new_zeros(()),
        )
        with torch.no_grad():
            approx_kl = float(((ratio - 1) - log_ratio).mean())
        stats["pg"].append(pg_loss.item())
        stats["entropy"].append(entropy_loss.item())
        stats["clip"].append(float(((ratio - 1).abs() > clip_range).float().mean()))
        stats["kl"].append(approx_kl)
        stats["ratio"].append(float(ratio.detach().mean()))
        stats["neg_log_prob"].append(-float(terms.log_prob.detach().mean()))
        stats["cov"].append(float(cov.mean()))
        stats["cov_max"].append(float(cov.max()))
        stats["selected"].append(selected)
        actor_loss = pg_loss + self.ent_coef * entropy_loss
        for name, (coef, value) in losses.items():
            stats[name].append(value.item())
            actor_loss = actor_loss + coef * value
        return actor_loss, terms.values, approx_kl, ratio.detach()

    def _policy_loss(
        self,
        terms: PolicyTerms,
        advantages: Tensor,
        ratio: Tensor,
        log_ratio: Tensor,
        clip_range: float,
        cov: Tensor,
    ) -> tuple[Tensor, float]:
        """The policy loss of a minibatch from its normalized advantages (M,).

        PPO's clipped surrogate on the learner's ratio (:meth:`_surrogate`); a learner whose
        paper trains without a ratio (NFT's forward-process loss) overrides this alone and
        keeps the ratio as a diagnostic (the first-minibatch check, the KL stop, logging).

        Returns:
            ``(loss (), share of the minibatch entropy control acted on)``.
        """
        return self._surrogate(
            self._column_advantages(advantages, log_ratio, terms.advantage_weights),
            ratio,
            log_ratio,
            clip_range,
            cov,
        )

    def _column_advantages(
        self, advantages: Tensor, log_ratio: Tensor, weights: Tensor | None
    ) -> Tensor:
        """The advantages in the shape of the log-ratio: (M,), or (M, N) times the weights."""
        if log_ratio.ndim == 1:
            if weights is not None:
                raise ValueError("advantage_weights need an (M, N) log_ratio")
            return advantages
        if log_ratio.ndim != 2 or log_ratio.shape[0] != advantages.shape[0]:
            raise ValueError(
                f"log_ratio must be (M,) or (M, N) with M = {advantages.shape[0]}, got "
                f"{tuple(log_ratio.shape)}"
            )
        if self.entropy_control is not None:
            raise ValueError(
                f"entropy_control={self.entropy_control!r} selects samples by one log-ratio "
                f"each; {type(self).__name__} has {log_ratio.shape[1]} per sample"
            )
        columns = advantages[:, None].expand_as(log_ratio)
        if weights is not None:
            if weights.shape != (log_ratio.shape[1],):
                raise ValueError(
                    f"advantage_weights must be ({log_ratio.shape[1]},), got {tuple(weights.shape)}"
                )
            columns = columns * weights.to(columns)
        return columns

    def _surrogate(
        self, advantages: Tensor, ratio: Tensor, log_ratio: Tensor, clip_range: float, cov: Tensor
    ) -> tuple[Tensor, float]:
        """The policy-gradient loss of a minibatch and the share entropy control acted on.

        PPO's clipped surrogate (or its Clip-Cov / KL-Cov form); a learner whose paper
        changes the surrogate (FPO++'s asymmetric trust region) overrides this alone.
        ``advantages``, ``ratio`` and ``log_ratio`` share one shape, (M,) or (M, N).
        """
        return surrogate_loss(
            advantages,
            ratio,
            log_ratio,
            clip_range,
            control=self.entropy_control,
            cov=cov,
            fraction=self.cov_fraction,
            clip_cov_bounds=self.clip_cov_bounds,
            kl_cov_coef=self.kl_cov_coef,
        )

    def _record(
        self,
        stats: dict[str, list[float]],
        clip_range: float,
        first_ratio: float,
        first_deviation: float,
        first_stats: dict[str, float],
    ) -> None:
        """Write this update's scalars to SB3's logger (TensorBoard, stdout, …)."""
        buffer = self.rollout_buffer
        explained = explained_variance(buffer.values.flatten(), buffer.returns.flatten())
        mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
        self.logger.record("train/policy_gradient_loss", mean(stats["pg"]))
        self.logger.record("train/value_loss", mean(stats["value"]))
        self.logger.record("train/entropy_loss", mean(stats["entropy"]))
        for name in ("bc", *self.extra_loss_names):
            self.logger.record(f"train/{name}_loss", mean(stats[name]))
        self.logger.record("train/approx_kl", mean(stats["kl"]))
        self.logger.record("train/clip_fraction", mean(stats["clip"]))
        self.logger.record("train/explained_variance", float(explained))
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        self.logger.record("train/learning_rate", self.policy.optimizer.param_groups[0]["lr"])
        self.logger.record(
            "train/critic_learning_rate", self.policy.critic_optimizer.param_groups[0]["lr"]
        )
        self.logger.record("train/neg_log_prob_mean", mean(stats["neg_log_prob"]))
        self.logger.record("train/log_prob_adv_cov_mean", mean(stats["cov"]))
        self.logger.record("train/log_prob_adv_cov_max", mean(stats["cov_max"]))
        self.logger.record("train/entropy_control_fraction", mean(stats["selected"]))
        self.logger.record("flow/ratio_mean", mean(stats["ratio"]))
        self.logger.record("flow/ratio_first_minibatch", first_ratio)
        self.logger.record("flow/ratio_first_minibatch_max_deviation", first_deviation)
        for key, value in first_stats.items():
            self.logger.record(key, value)
        self.logger.record(
            "train/critic_warmup", float(self._updates_done <= self.critic_warmup_updates)
        )
        self._record_extra()
