"""ReinFlow: PPO on the exact likelihood of a noise-injected flow chain (arXiv 2505.22094).

    model = ReinFlow("FlowPolicy", "Hopper-v5", policy_kwargs={"pretrained": "bc.pt"})
    model.learn(1_000_000)

Each env step samples a K-step chain a⁰ → a^K with learned Gaussian noise on every Euler
step (see :class:`~flowrl.policies.flow_policy.FlowPolicy`); the chain's log-likelihood is a
sum of Gaussian log-densities, so PPO's clipped ratio applies to it exactly. The learner
reads top to bottom: rollout (``collect_rollouts``), then the update (``train``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import FloatSchedule, explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch import Tensor

from flowrl.algos.buffers import ChainRolloutBuffer
from flowrl.policies.flow_policy import FlowPolicy, check_spaces

__all__ = ["ReinFlow"]


def torch_face(env: VecEnv) -> Any | None:
    """The torch-native face of ``env``, or None.

    E.g. :class:`flowrl.envs.mjx.MJXVecEnv`'s ``env.torch``.

    Only the outermost env counts: a wrapper such as ``VecNormalize`` forwards attribute
    lookups to the env inside, and going around it would skip its normalization.
    """
    face = vars(env).get("torch")
    return face if callable(getattr(face, "step", None)) else None


class ReinFlow(OnPolicyAlgorithm):
    """PPO fine-tuning of flow policies through ReinFlow's noise-injected chain.

    Args:
        policy: ``"FlowPolicy"``, the class, or a ready :class:`FlowPolicy` instance (e.g.
            ``FlowPolicy.from_pretrained("bc.pt", env.observation_space, env.action_space)``).
        env: Env, VecEnv or registered id.
        learning_rate: Actor (velocity + noise nets) learning rate or schedule.
        critic_learning_rate: Value-network learning rate (constant).
        n_steps: Steps per env per rollout.
        batch_size: Minibatch size.
        n_epochs: Passes over each rollout.
        gamma: Discount.
        gae_lambda: GAE λ.
        clip_range: PPO ratio clip ε (float or schedule).
        clip_range_vf: Value clip (None disables).
        normalize_advantage: Standardise advantages per minibatch.
        ent_coef: Weight of the chain-entropy bonus.
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
        sigma_max_final: σ_max at the end of training (None keeps σ_max constant).
        sigma_hold_fraction: Fraction of training σ_max is held before its cosine decay.
        log_prob_reduction: ``"sum"`` — the exact chain log-likelihood enters the ratio;
            ``"mean"`` — it is divided by K·Da first (smaller, steadier ratios for long
            chains; no longer the exact likelihood ratio).
        log_ratio_clip: Clamp the log-ratio to [−c, c] before exponentiating (None: off).
        ratio_check_tol: Max |ratio − 1| allowed on the first minibatch of every update.
        sampler_check_tol: Max |log p| difference allowed between the sampler's log-probs
            and ``log_prob_chain`` on the same chains (float32 round-off of the networks,
            which depends on batch size, stays below ~1e-5; a wrong time grid or K gives
            differences of order 1).
        stats_window_size: Episodes averaged in ``rollout/`` statistics.
        tensorboard_log: TensorBoard folder (None: no logging).
        policy_kwargs: FlowPolicy constructor arguments (``pretrained``, ``num_steps``, …).
        verbose: 0 silent, 1 info.
        seed: Seed of python, numpy, torch and the env.
        device: Torch device.
        _init_setup_model: Build the networks now (SB3's load passes False).
    """

    policy_aliases = {"FlowPolicy": FlowPolicy}  # noqa: RUF012 (SB3's class attribute)
    policy: FlowPolicy
    rollout_buffer: ChainRolloutBuffer

    def __init__(
        self,
        policy: str | type[FlowPolicy] | FlowPolicy,
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
        sigma_max_final: float | None = None,
        sigma_hold_fraction: float = 0.5,
        log_prob_reduction: Literal["sum", "mean"] = "sum",
        log_ratio_clip: float | None = None,
        ratio_check_tol: float = 1e-6,
        sampler_check_tol: float = 1e-3,
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
        if log_prob_reduction not in ("sum", "mean"):
            raise ValueError(
                f"log_prob_reduction must be 'sum' or 'mean', got {log_prob_reduction!r}"
            )
        if batch_size < 2:
            raise ValueError(f"batch_size must be > 1 (advantage normalization), got {batch_size}")
        if not 0.0 <= sigma_hold_fraction <= 1.0:
            raise ValueError(f"sigma_hold_fraction must lie in [0, 1], got {sigma_hold_fraction}")
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
        self.sigma_max_final = sigma_max_final
        self.sigma_hold_fraction = sigma_hold_fraction
        self.log_prob_reduction = log_prob_reduction
        self.log_ratio_clip = log_ratio_clip
        self.ratio_check_tol = ratio_check_tol
        self.sampler_check_tol = sampler_check_tol
        if _init_setup_model:
            self._setup_model()

    # ------------------------------------------------------------------ setup

    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        check_spaces(self.observation_space, self.action_space)
        if isinstance(self.policy_class, FlowPolicy):  # a ready instance was passed
            if self.policy_kwargs:
                raise ValueError("pass policy_kwargs or a FlowPolicy instance, not both")
            policy = self.policy_class
            # Action bounds matter (the policy maps its [-1, 1] box onto them); observation
            # bounds may legitimately differ (wrappers), their shape may not.
            if policy.observation_space.shape != self.observation_space.shape or (
                policy.action_space != self.action_space
            ):
                raise ValueError(
                    f"the policy was built for observations {policy.observation_space.shape} and "
                    f"actions {policy.action_space}, but the env has "
                    f"{self.observation_space.shape} and {self.action_space}"
                )
            self.policy_class = type(policy)
        elif isinstance(self.policy_class, type) and issubclass(self.policy_class, FlowPolicy):
            policy = self.policy_class(
                self.observation_space, self.action_space, self.lr_schedule, **self.policy_kwargs
            )
        else:
            name = getattr(self.policy_class, "__name__", type(self.policy_class).__name__)
            raise ValueError(
                f"ReinFlow needs a FlowPolicy, got {name}: a checkpoint or policy of another "
                "algorithm (e.g. PPO's ActorCriticPolicy) must be loaded with that algorithm"
            )
        self.policy = policy.to(self.device)
        # Save/load rebuilds the policy from these arguments and then loads its weights (the
        # pretrained and reference flows included), so no checkpoint path is needed later.
        params = self.policy._get_constructor_parameters()
        for key in ("observation_space", "action_space", "lr_schedule"):
            params.pop(key, None)
        self.policy_kwargs = params
        final = self.sigma_max_final
        if final is not None and not self.policy.sigma_min <= final <= self.policy._sigma_max_init:
            raise ValueError(
                f"sigma_max_final={final} must lie in [sigma_min, sigma_max] = "
                f"[{self.policy.sigma_min}, {self.policy._sigma_max_init}]"
            )
        self.clip_range = FloatSchedule(self.clip_range)
        if self.clip_range_vf is not None:
            self.clip_range_vf = FloatSchedule(self.clip_range_vf)
        self.rollout_buffer = ChainRolloutBuffer(
            self.n_steps,
            self.observation_space,
            self.action_space,
            num_steps=self.policy.num_steps,
            device=self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
        )

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy", "policy.optimizer", "policy.critic_optimizer"], []

    # ------------------------------------------------------------------ schedule

    def sigma_max_at(self, progress_remaining: float) -> float:
        """σ_max for a training progress: held, then cosine-decayed to ``sigma_max_final``."""
        start = self.policy._sigma_max_init
        done = 1.0 - progress_remaining
        if self.sigma_max_final is None or done <= self.sigma_hold_fraction:
            return start
        frac = (done - self.sigma_hold_fraction) / max(1.0 - self.sigma_hold_fraction, 1e-8)
        value = self.sigma_max_final + 0.5 * (start - self.sigma_max_final) * (
            1 + math.cos(math.pi * min(frac, 1.0))
        )
        return max(value, self.policy.sigma_min)

    # ------------------------------------------------------------------ rollout

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """Fill the buffer with ``n_rollout_steps`` steps of every env (chains included)."""
        assert self._last_obs is not None, "No previous observation was provided"
        assert isinstance(rollout_buffer, ChainRolloutBuffer)
        self.policy.set_training_mode(False)
        # σ_max changes only between rollouts, so old and new log-probs share it. SB3 updates
        # the progress after the rollout; refresh it here so a new learn() call starts anew.
        self._update_current_progress_remaining(self.num_timesteps, self._total_timesteps)
        self.policy.sigma_max.fill_(self.sigma_max_at(self._current_progress_remaining))
        rollout_buffer.reset()
        callback.on_rollout_start()
        n_steps = 0
        torch_env = torch_face(env)
        while n_steps < n_rollout_steps:
            with torch.no_grad():
                obs_tensor = self._last_obs_tensor()
                actions, values, log_probs, chains = self.policy(obs_tensor)
            if torch_env is None:
                new_obs, rewards, dones, infos = env.step(actions.cpu().numpy())
            else:
                new_obs, rewards, dones, infos = self._torch_env_step(torch_env, actions)
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
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
                    with torch.no_grad():
                        terminal_value = self.policy.predict_values(
                            self.policy.obs_to_tensor(terminal_obs)[0]  # type: ignore[arg-type]
                        )[0]
                    rewards[idx] += self.gamma * float(terminal_value)
            rollout_buffer.add_chain(
                self._last_obs,  # type: ignore[arg-type]
                chains,
                rewards,
                self._last_episode_starts,  # type: ignore[arg-type]
                values,
                log_probs,
            )
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones
        with torch.no_grad():
            values = self.policy.predict_values(obs_as_tensor(new_obs, self.device))  # type: ignore[arg-type]
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def _excluded_save_params(self) -> list[str]:
        # The torch-native env's last observation tensor (it may alias a JAX buffer) is
        # rollout state like the env itself: it is not pickled into checkpoints.
        return [*super()._excluded_save_params(), "_torch_obs"]

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

    # ------------------------------------------------------------------ update

    def _log_ratio(self, log_prob: Tensor, old_log_prob: Tensor) -> Tensor:
        """Log π_new/π_old of each chain, with the named reduction and clamp options."""
        log_ratio = log_prob - old_log_prob
        if self.log_prob_reduction == "mean":
            log_ratio = log_ratio / (self.policy.num_steps * self.action_space.shape[0])  # type: ignore[index]
        if self.log_ratio_clip is not None:
            log_ratio = log_ratio.clamp(-self.log_ratio_clip, self.log_ratio_clip)
        return log_ratio

    def _refresh_old_log_probs(self, indices: np.ndarray) -> float:
        """Re-score the rollout's chains with the unchanged policy, in the first epoch's layout.

        The sampler already returned exact log-probs, but float32 network outputs differ in
        their last bits between the rollout's batch of E rows and a minibatch of M rows (up
        to ~5e-6 in log p, measured), which would put the first-minibatch ratio 1 ± 1e-5.
        Scoring the same rows in the same minibatches as epoch 0 makes that ratio exactly 1
        unless something really changed, and comparing against the sampler's values catches
        a sampler/likelihood mismatch (a different grid, K or noise model).

        Returns:
            Max |log p_sampler − log p_recomputed| over the buffer.
        """
        buffer = self.rollout_buffer
        buffer.flatten()
        sampled = buffer.log_probs.copy()
        with torch.no_grad():
            for batch, start in zip(
                buffer.get(self.batch_size, indices),
                range(0, len(indices), self.batch_size),
                strict=True,
            ):
                rows = indices[start : start + self.batch_size]
                log_prob = self.policy.log_prob_chain(batch.observations, batch.chains)
                buffer.log_probs[rows] = log_prob.cpu().numpy().reshape(-1, 1)  # (rows, 1)
        error = float(np.abs(buffer.log_probs - sampled).max())
        if not error <= self.sampler_check_tol:
            raise RuntimeError(
                f"the sampler's chain log-probs and log_prob_chain differ by up to {error:.3g} "
                f"(tolerance {self.sampler_check_tol:g}) on the same chains with the same "
                "weights: sampling and likelihood disagree. Check that both use THE time grid "
                "(flowrl.flow.time_grid) with the same K and the same noise model, that no "
                "dropout is active, and that the observation normalizer did not change "
                "during the rollout."
            )
        return error

    def _check_first_ratio(self, ratio: Tensor) -> float:
        """Raise unless the first minibatch's ratio is 1: nothing has changed since the rollout."""
        deviation = float((ratio - 1).abs().max())
        if not deviation <= self.ratio_check_tol:
            raise RuntimeError(
                f"PPO ratio on the first minibatch deviates from 1 by {deviation:.3g} "
                f"(tolerance {self.ratio_check_tol:g}) before any update. The update scores "
                "chains differently from the rollout: check that the policy has no dropout or "
                "batch-norm in training mode, that its weights and observation normalizer "
                "were not changed between rollout and update, and that log_prob_chain uses "
                "THE time grid."
            )
        return deviation

    def train(self) -> None:
        """One PPO update over the rollout buffer."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        for group in self.policy.critic_optimizer.param_groups:
            group["lr"] = self.critic_learning_rate
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        clip_range_vf = (
            self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]
            if self.clip_range_vf is not None
            else None
        )
        stats: dict[str, list[float]] = {
            k: [] for k in ("pg", "value", "entropy", "bc", "clip", "kl", "ratio")
        }
        first_deviation = first_ratio = sigma_mean = float("nan")
        first_order = np.random.permutation(self.rollout_buffer.buffer_size * self.n_envs)
        sampler_error = self._refresh_old_log_probs(first_order)
        # The actor steps unless the critic is warming up or target_kl has stopped it; the
        # critic steps on every minibatch of every epoch the loop runs.
        actor_on = self._updates_done >= self.critic_warmup_updates
        self._updates_done += 1
        kl_limit = None if self.target_kl is None else 1.5 * self.target_kl
        stop = False
        epoch = 0
        for epoch in range(self.n_epochs):  # noqa: B007 (logged after the loop)
            order = first_order if epoch == 0 else None
            for batch_index, batch in enumerate(self.rollout_buffer.get(self.batch_size, order)):
                obs = batch.observations
                first = epoch == 0 and batch_index == 0
                # The first minibatch is scored even when the actor is off: its ratio check
                # (ratio = 1 before any step) guards every update.
                if actor_on or first:
                    actor_loss, values, approx_kl, ratio = self._actor_terms(
                        batch, clip_range, stats
                    )
                    if first:
                        first_deviation = self._check_first_ratio(ratio)
                        first_ratio = float(ratio.mean())
                        sigma_mean = self._sigma_mean(obs)
                else:
                    values = self.policy.predict_values(obs).flatten()

                if clip_range_vf is not None:
                    values = batch.old_values + (values - batch.old_values).clamp(
                        -clip_range_vf, clip_range_vf
                    )
                value_loss = torch.nn.functional.mse_loss(batch.returns, values)
                stats["value"].append(value_loss.item())
                if actor_on and kl_limit is not None and approx_kl > kl_limit:
                    actor_on = False
                    if self.verbose >= 1:
                        print(f"Early stopping at epoch {epoch} (approx. KL {approx_kl:.4f})")
                    if not self.critic_full_epochs:
                        stop = True
                        break
                loss = self.vf_coef * value_loss
                if actor_on:
                    loss = loss + actor_loss
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"ReinFlow loss is {loss.item()} (value {value_loss.item()}, policy "
                        f"terms {actor_loss.item() if actor_on else 'off'}); the update was not "
                        "applied. Check rewards/observations for NaN or extreme values, lower "
                        "the learning rate, or set log_ratio_clip."
                    )

                self.policy.optimizer.zero_grad(set_to_none=True)
                self.policy.critic_optimizer.zero_grad(set_to_none=True)
                loss.backward()
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
        self._record(stats, clip_range, first_ratio, first_deviation, sigma_mean)
        self.logger.record("flow/sampler_log_prob_max_error", sampler_error)

    def _actor_terms(
        self, batch: Any, clip_range: float, stats: dict[str, list[float]]
    ) -> tuple[Tensor, Tensor, float, Tensor]:
        """The actor's side of one minibatch: clipped surrogate, entropy and W2 terms.

        Appends this minibatch's policy statistics to ``stats``.

        Returns:
            ``(actor_loss (), values (B,), approx_kl, ratio (B,) detached)``: the loss the
            actor steps on (policy + ent_coef·entropy + bc_coef·W2), the value net's
            predictions from the same pass, and the approximate KL of the ratio.
        """
        log_prob, entropy, values = self.policy.evaluate_chain(batch.observations, batch.chains)
        log_ratio = self._log_ratio(log_prob, batch.old_log_prob)
        ratio = torch.exp(log_ratio)
        advantages = batch.advantages
        if self.normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        pg_loss = -torch.min(
            advantages * ratio, advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
        ).mean()
        if self.log_prob_reduction == "mean":
            entropy = entropy / (self.policy.num_steps * self.action_space.shape[0])  # type: ignore[index]
        entropy_loss = -entropy.mean()
        bc_loss = (
            self.policy.bc_regularizer(batch.observations).mean()
            if self.bc_coef > 0
            else pg_loss.new_zeros(())
        )
        with torch.no_grad():
            approx_kl = float(((ratio - 1) - log_ratio).mean())
        stats["pg"].append(pg_loss.item())
        stats["entropy"].append(entropy_loss.item())
        stats["bc"].append(bc_loss.item())
        stats["clip"].append(float(((ratio - 1).abs() > clip_range).float().mean()))
        stats["kl"].append(approx_kl)
        stats["ratio"].append(float(ratio.detach().mean()))
        actor_loss = pg_loss + self.ent_coef * entropy_loss + self.bc_coef * bc_loss
        return actor_loss, values, approx_kl, ratio.detach()

    def _sigma_mean(self, obs: Tensor) -> float:
        """Mean σ_φ over the grid, the observations and the action dims."""
        with torch.no_grad():
            return float(self.policy.sigma_grid(obs).mean())

    def _record(
        self,
        stats: dict[str, list[float]],
        clip_range: float,
        first_ratio: float,
        first_deviation: float,
        sigma_mean: float,
    ) -> None:
        """Write this update's scalars to SB3's logger (TensorBoard, stdout, …)."""
        buffer = self.rollout_buffer
        explained = explained_variance(buffer.values.flatten(), buffer.returns.flatten())
        mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
        self.logger.record("train/policy_gradient_loss", mean(stats["pg"]))
        self.logger.record("train/value_loss", mean(stats["value"]))
        self.logger.record("train/entropy_loss", mean(stats["entropy"]))
        self.logger.record("train/bc_loss", mean(stats["bc"]))
        self.logger.record("train/approx_kl", mean(stats["kl"]))
        self.logger.record("train/clip_fraction", mean(stats["clip"]))
        self.logger.record("train/explained_variance", float(explained))
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        self.logger.record("train/learning_rate", self.policy.optimizer.param_groups[0]["lr"])
        self.logger.record("flow/ratio_mean", mean(stats["ratio"]))
        self.logger.record("flow/ratio_first_minibatch", first_ratio)
        self.logger.record("flow/ratio_first_minibatch_max_deviation", first_deviation)
        self.logger.record("flow/sigma_mean", sigma_mean)
        self.logger.record("flow/sigma_max", float(self.policy.sigma_max))
        self.logger.record("flow/num_steps", self.policy.num_steps)
        self.logger.record(
            "train/critic_warmup", float(self._updates_done <= self.critic_warmup_updates)
        )

    def learn(
        self,
        total_timesteps: int,
        callback: Any = None,
        log_interval: int = 1,
        tb_log_name: str = "ReinFlow",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> ReinFlow:
        """Train for ``total_timesteps`` env steps (SB3's ``learn``; TensorBoard run "ReinFlow")."""
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
