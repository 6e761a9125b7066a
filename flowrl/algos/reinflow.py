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

from stable_baselines3.common.type_aliases import GymEnv
from torch import Tensor

from flowrl.algos.buffers import ChainRolloutBuffer, FieldRolloutSamples
from flowrl.algos.on_policy import OnPolicyCore, PolicyTerms, RolloutStep, torch_face
from flowrl.policies.flow_policy import FlowPolicy

__all__ = ["ReinFlow", "torch_face"]


class ReinFlow(OnPolicyCore):
    """PPO fine-tuning of flow policies through ReinFlow's noise-injected chain.

    Args:
        policy: ``"FlowPolicy"``, the class, or a ready :class:`FlowPolicy` instance (e.g.
            ``FlowPolicy.from_pretrained("bc.pt", env.observation_space, env.action_space)``).
        env: Env, VecEnv or registered id.
        sigma_max_final: σ_max at the end of training (None keeps σ_max constant).
        sigma_hold_fraction: Fraction of training σ_max is held before its cosine decay.
        log_prob_reduction: ``"sum"`` — the exact chain log-likelihood enters the ratio;
            ``"mean"`` — it is divided by K·Da first (smaller, steadier ratios for long
            chains; no longer the exact likelihood ratio), and so is the chain entropy.
        **kwargs: The on-policy core's arguments (:class:`OnPolicyCore`: ``learning_rate``,
            ``n_steps``, ``batch_size``, ``clip_range``, ``ent_coef`` — the chain's Gaussian
            entropy —, ``bc_coef``, ``target_kl``, ``critic_warmup_updates``,
            ``entropy_control``, ``policy_kwargs`` — :class:`FlowPolicy`'s —, ``seed``, …).
    """

    policy_aliases = {"FlowPolicy": FlowPolicy}  # noqa: RUF012 (SB3's class attribute)
    policy: FlowPolicy
    policy_base = FlowPolicy
    rollout_buffer: ChainRolloutBuffer

    def __init__(
        self,
        policy: str | type[FlowPolicy] | FlowPolicy,
        env: GymEnv | str,
        *,
        sigma_max_final: float | None = None,
        sigma_hold_fraction: float = 0.5,
        log_prob_reduction: Literal["sum", "mean"] = "sum",
        **kwargs: Any,
    ):
        if log_prob_reduction not in ("sum", "mean"):
            raise ValueError(
                f"log_prob_reduction must be 'sum' or 'mean', got {log_prob_reduction!r}"
            )
        if not 0.0 <= sigma_hold_fraction <= 1.0:
            raise ValueError(f"sigma_hold_fraction must lie in [0, 1], got {sigma_hold_fraction}")
        self.sigma_max_final = sigma_max_final
        self.sigma_hold_fraction = sigma_hold_fraction
        self.log_prob_reduction = log_prob_reduction
        super().__init__(policy, env, **kwargs)

    def _check_policy(self) -> None:
        final = self.sigma_max_final
        if final is not None and not self.policy.sigma_min <= final <= self.policy._sigma_max_init:
            raise ValueError(
                f"sigma_max_final={final} must lie in [sigma_min, sigma_max] = "
                f"[{self.policy.sigma_min}, {self.policy._sigma_max_init}]"
            )

    def _make_buffer(self) -> ChainRolloutBuffer:
        return ChainRolloutBuffer(
            self.n_steps,
            self.observation_space,
            self.action_space,
            num_steps=self.policy.num_steps,
            device=self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
        )

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

    def _before_rollout(self) -> None:
        # σ_max changes only between rollouts, so old and new log-probs share it.
        self.policy.sigma_max.fill_(self.sigma_max_at(self._current_progress_remaining))

    # ------------------------------------------------------------------ rollout and update

    def _act(self, obs: Tensor) -> RolloutStep:
        actions, values, log_probs, chains = self.policy(obs)
        return RolloutStep(actions, chains[:, -1], values, log_probs, {"chains": chains})

    def _score_old(self, batch: FieldRolloutSamples) -> dict[str, Tensor]:
        return {"log_probs": self.policy.log_prob_chain(batch.observations, batch.fields["chains"])}

    def _reduction_scale(self) -> int:
        """What ``log_prob_reduction`` divides chain log-ratios and entropies by (1: "sum")."""
        if self.log_prob_reduction == "mean":
            return self.policy.num_steps * self.action_space.shape[0]  # type: ignore[index]
        return 1

    def _log_ratio(self, log_prob: Tensor, old_log_prob: Tensor) -> Tensor:
        """Log π_new/π_old of each chain, reduced as ``log_prob_reduction`` says."""
        return (log_prob - old_log_prob) / self._reduction_scale()

    def _policy_terms(self, batch: FieldRolloutSamples) -> PolicyTerms:
        """The chain's exact log-ratio (reduced as ``log_prob_reduction`` says) and entropy."""
        log_prob, entropy, values = self.policy.evaluate_chain(
            batch.observations, batch.fields["chains"]
        )
        log_ratio = self._log_ratio(log_prob, batch.old_log_prob)
        entropy = entropy / self._reduction_scale()
        return PolicyTerms(log_ratio=log_ratio, log_prob=log_prob, entropy=entropy, values=values)

    def _first_minibatch_stats(self, batch: FieldRolloutSamples) -> dict[str, float]:
        # Mean σ_φ over the grid, the observations and the action dims.
        return {"flow/sigma_mean": float(self.policy.sigma_grid(batch.observations).mean())}

    def _record_extra(self) -> None:
        self.logger.record("flow/sigma_max", float(self.policy.sigma_max))
        self.logger.record("flow/num_steps", self.policy.num_steps)
