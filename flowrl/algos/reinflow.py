"""ReinFlow: PPO on the exact likelihood of a noise-injected flow chain (arXiv 2505.22094).

    model = ReinFlow("FlowPolicy", "Hopper-v5", policy_kwargs={"pretrained": "bc.pt"})
    model.learn(1_000_000)

Each env step samples a K-step chain a⁰ → a^K with learned Gaussian noise on every Euler
step (see :class:`~flowrl.policies.flow_policy.FlowPolicy`); the chain's log-likelihood is a
sum of Gaussian log-densities, so PPO's clipped ratio applies to it exactly. The learner
reads top to bottom: rollout (``collect_rollouts``), then the update (``train``).

``log_prob_reduction="paper"`` reproduces the official implementation's per-term average
and clamp instead (see :meth:`ReinFlow.reduce_log_prob`); ``flowrl.recipes.reinflow_paper``
returns the paper's MuJoCo settings to go with it (``docs/reinflow_paper_settings.md``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from stable_baselines3.common.type_aliases import GymEnv
from torch import Tensor

from flowrl.algos.buffers import ChainRolloutBuffer, FieldRolloutSamples
from flowrl.algos.on_policy import OnPolicyCore, PolicyTerms, RolloutStep, torch_face
from flowrl.policies.flow_policy import FlowPolicy

__all__ = ["PAPER_LOG_PROB_BOUNDS", "ReinFlow", "torch_face"]

# The official ReinFlow code clamps each chain's averaged log-probability (new and old) to
# [logprob_min, logprob_max] before the ratio; every MuJoCo config there sets [-1, 1]
# (model/flow/ft_ppo/ppoflow.py, PPOFlow.loss; cfg/gym/finetune/*/ft_ppo_reflow_mlp.yaml).
PAPER_LOG_PROB_BOUNDS = (-1.0, 1.0)

LogProbReduction = Literal["sum", "mean", "paper"]


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
            chains; no longer the exact likelihood ratio), and so is the chain entropy;
            ``"paper"`` — as the official ReinFlow code: divided by the number of Gaussian
            terms, (K+1)·Da with a random chain start (``initial_std`` > 0; K·Da for a⁰ = 0),
            then clamped to :data:`PAPER_LOG_PROB_BOUNDS` ([−1, 1]) for old and new
            log-probs alike; the entropy (a⁰'s included) is divided likewise. Da is the
            policy's action size, Ta·Da under an action chunk. Clip ranges, entropy
            coefficients and KL targets tuned for one reduction do not transfer to another.
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
        log_prob_reduction: LogProbReduction = "sum",
        **kwargs: Any,
    ):
        if log_prob_reduction not in ("sum", "mean", "paper"):
            raise ValueError(
                f"log_prob_reduction must be 'sum', 'mean' or 'paper', got {log_prob_reduction!r}"
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
        # The update's own scoring function (evaluate_chain), so that the first minibatch's
        # ratio is 1 to the last bit, compiled or not.
        log_prob = self.policy.evaluate_chain(batch.observations, batch.fields["chains"])[0]
        return {"log_probs": log_prob}

    def _reduction_scale(self) -> int:
        """What ``log_prob_reduction`` divides chain log-probs and entropies by (1: "sum").

        "mean": K·Da; "paper": the number of Gaussian terms, (K+1)·Da when a⁰ is drawn
        (``initial_std`` > 0) and K·Da when a⁰ = 0 is fixed (the official code's
        ``account_for_initial_stochasticity`` on and off).
        """
        action_size = self.action_space.shape[0]  # type: ignore[index]
        if self.log_prob_reduction == "mean":
            return self.policy.num_steps * action_size
        if self.log_prob_reduction == "paper":
            return (self.policy.num_steps + int(self.policy.initial_std > 0)) * action_size
        return 1

    def reduce_log_prob(self, log_prob: Tensor) -> Tensor:
        """A chain's log-probability as ``log_prob_reduction`` defines it.

        "sum" returns the exact log-likelihood unchanged and "mean" divides it by K·Da.
        "paper" is the official implementation's value: the mean over the chain's Gaussian
        terms, clamped to :data:`PAPER_LOG_PROB_BOUNDS`, i.e.
        ``clamp((log N(a⁰) + Σ_k log N(a^{k+1} | a^k)) / ((K+1)·Da), −1, 1)``.

        Args:
            log_prob: Exact chain log-likelihoods, shape (B,) (``log_prob_chain``'s).

        Returns:
            The reduced log-probabilities, shape (B,).
        """
        reduced = log_prob / self._reduction_scale()
        if self.log_prob_reduction == "paper":
            reduced = reduced.clamp(*PAPER_LOG_PROB_BOUNDS)
        return reduced

    def _log_ratio(self, log_prob: Tensor, old_log_prob: Tensor) -> Tensor:
        """Log π_new/π_old of each chain, reduced as ``log_prob_reduction`` says.

        "paper" reduces (and clamps) both log-probs before subtracting, as the official code
        does, so a chain whose averaged log-prob lies outside the bounds has ratio 1 and no
        gradient.
        """
        if self.log_prob_reduction == "paper":
            return self.reduce_log_prob(log_prob) - self.reduce_log_prob(old_log_prob)
        return (log_prob - old_log_prob) / self._reduction_scale()

    def _chain_entropy(self, transition_entropy: Tensor) -> Tensor:
        """The entropy term: the transitions' (plus a⁰'s for "paper"), reduced."""
        if self.log_prob_reduction == "paper" and self.policy.initial_std > 0:
            # a⁰ ~ N(0, c²I) adds Da·½·log(2πe·c²), a constant: it moves the logged value to
            # the official code's, not the gradient.
            action_size = self.action_space.shape[0]  # type: ignore[index]
            c = self.policy.initial_std
            transition_entropy = transition_entropy + action_size * 0.5 * math.log(
                2 * math.pi * math.e * c * c
            )
        return transition_entropy / self._reduction_scale()

    def _policy_terms(self, batch: FieldRolloutSamples) -> PolicyTerms:
        """The chain's log-ratio and entropy, reduced as ``log_prob_reduction`` says.

        The log-prob handed on (entropy control, the ``neg_log_prob`` statistic) is the exact
        one for "sum" and "mean" and the paper's reduced, clamped one for "paper".
        """
        log_prob, entropy, values = self.policy.evaluate_chain(
            batch.observations, batch.fields["chains"]
        )
        log_ratio = self._log_ratio(log_prob, batch.old_log_prob)
        if self.log_prob_reduction == "paper":
            log_prob = self.reduce_log_prob(log_prob)
        entropy = self._chain_entropy(entropy)
        return PolicyTerms(log_ratio=log_ratio, log_prob=log_prob, entropy=entropy, values=values)

    def _first_minibatch_stats(self, batch: FieldRolloutSamples) -> dict[str, float]:
        # Mean σ_φ over the grid, the observations and the action dims.
        return {"flow/sigma_mean": float(self.policy.sigma_grid(batch.observations).mean())}

    def _record_extra(self) -> None:
        self.logger.record("flow/sigma_max", float(self.policy.sigma_max))
        self.logger.record("flow/num_steps", self.policy.num_steps)
