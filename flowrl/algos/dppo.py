"""DPPO: PPO on every denoising step of a diffusion policy (arXiv 2409.00588).

    policy = DiffusionPolicy.from_pretrained("bc.pt", env.observation_space, env.action_space,
                                             num_steps=20, ft_denoising_steps=10)
    model = DPPO(policy, env)
    model.learn(1_000_000)

DPPO treats denoising as an inner MDP: each (env step, denoising step) pair is a PPO sample
whose action is the next chain state, with the Gaussian likelihood of that step (std floored
at ``sigma_min``, :class:`~flowrl.policies.DiffusionPolicy`). Only the last K′ of K steps are
fine-tuned; the env step's advantage is discounted across them by γ_denoise, the final step
(the action sent to the env) with weight 1 and step i of K′ (0 = noisiest) with
γ_denoise^(K′−1−i).

On the shared core (:class:`~flowrl.algos.on_policy.OnPolicyCore`) one env step is one
buffer row with K′ log-ratios (an (M, K′) ``log_ratio``), each clipped with the row's
advantage times its column's discount; the surrogate is the mean over all M·K′ pairs.
(The official code shuffles the pairs themselves into minibatches and normalizes the
advantages over them; here a minibatch holds all K′ pairs of its env steps.)

The official Gym settings (``cfg/gym/finetune/hopper-v2/ft_ppo_diffusion_mlp.yaml``): K = 20,
K′ = 10, σ_min 0.1, noise clip 3, x̂1 clip 1, γ_denoise 0.99, actor/critic learning rates
1e-4/1e-3, 5 epochs, γ 0.99, λ 0.95, clip 0.01 on per-dim-averaged, clamped log-probs
(``log_prob_reduction="paper"``), target KL 1, 40 envs × 500 steps, minibatches of 50 000
pairs, action chunks of 4, running reward scaling. Its clip range also grows
exponentially across the denoising steps from ``clip_ploss_coef_base``; the Gym configs
set base and final value equal (0.01), which is the core's one clip range.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from stable_baselines3.common.type_aliases import GymEnv
from torch import Tensor

from flowrl.algos.buffers import FieldRolloutSamples
from flowrl.algos.on_policy import OnPolicyCore, PolicyTerms, RolloutStep
from flowrl.policies.diffusion import DiffusionPolicy

__all__ = ["PAPER_LOG_PROB_BOUNDS", "DPPO"]

# The official DPPO code averages each step's log-probability over the action dims and
# clamps it (new and old) to [-5, 2] before the ratio (model/diffusion/diffusion_ppo.py,
# PPODiffusion.loss).
PAPER_LOG_PROB_BOUNDS = (-5.0, 2.0)

LogProbReduction = Literal["sum", "paper"]


class DPPO(OnPolicyCore):
    """Diffusion Policy Policy Optimization on the shared on-policy core.

    Args:
        policy: ``"DiffusionPolicy"``, the class, or a ready :class:`DiffusionPolicy` (e.g.
            ``DiffusionPolicy.from_pretrained("bc.pt", obs_space, action_space)``). K, K′
            (``ft_denoising_steps``), the std floor ``sigma_min``, η and the clamps are
            the policy's options (``policy_kwargs``).
        env: Env, VecEnv or registered id.
        gamma_denoising: γ_denoise ∈ (0, 1], the advantage's discount per denoising step
            before the last (DPPO's ``gamma_denoising``, 0.99 in its Gym configs).
        log_prob_reduction: ``"sum"`` — each step's exact log-likelihood (summed over the
            action dims) enters its ratio; ``"paper"`` — as the official code: each step's
            log-probability is averaged over the action dims and clamped to
            :data:`PAPER_LOG_PROB_BOUNDS` ([−5, 2]), old and new alike (its clip range,
            0.01 in the Gym configs, belongs to this reduction).
        **kwargs: The on-policy core's arguments (:class:`OnPolicyCore`: ``learning_rate``,
            ``n_steps``, ``batch_size`` — env steps per minibatch, each with its K′ pairs —,
            ``clip_range``, ``bc_coef``, ``target_kl``, ``critic_warmup_updates``,
            ``policy_kwargs``, ``seed``, …). ``ent_coef`` has no effect: the steps' stds are
            fixed by the schedule. Entropy control needs one ratio per sample and is
            refused.
    """

    policy_aliases = {"DiffusionPolicy": DiffusionPolicy}  # noqa: RUF012 (SB3's class attribute)
    float64_fields = ("step_log_probs",)
    policy: DiffusionPolicy
    policy_base = DiffusionPolicy

    def __init__(
        self,
        policy: str | type[DiffusionPolicy] | DiffusionPolicy,
        env: GymEnv | str,
        *,
        gamma_denoising: float = 0.99,
        log_prob_reduction: LogProbReduction = "sum",
        **kwargs: Any,
    ):
        if not 0 < gamma_denoising <= 1:
            raise ValueError(
                f"gamma_denoising (γ_denoise, the advantage discount per denoising step) must "
                f"lie in (0, 1], got {gamma_denoising}; DPPO uses 0.99"
            )
        if log_prob_reduction not in ("sum", "paper"):
            raise ValueError(
                f"log_prob_reduction must be 'sum' or 'paper', got {log_prob_reduction!r}"
            )
        if kwargs.get("entropy_control") is not None:
            raise ValueError(
                f"entropy_control={kwargs['entropy_control']!r} selects samples by one "
                "log-ratio each, but DPPO has one per denoising step: leave it None"
            )
        self.gamma_denoising = float(gamma_denoising)
        self.log_prob_reduction = log_prob_reduction
        super().__init__(policy, env, **kwargs)

    def _rollout_fields(self) -> dict[str, tuple[int, ...]]:
        Da = self.action_space.shape[0]  # type: ignore[index]
        # The chain (K+1, Da) and the K′ fine-tuned steps' log-probabilities, float64: each
        # is a sum of magnitude ~Da, whose float32 round-off (~1e-6) alone would break the
        # first-minibatch check that every ratio is 1 to 1e-6.
        return {
            "chains": (self.policy.num_steps + 1, Da),
            "step_log_probs": (self.policy.ft_denoising_steps,),
        }

    # ------------------------------------------------------------------ rollout and update

    def _act(self, obs: Tensor) -> RolloutStep:
        chain, step_log_probs = self.policy.sample(obs)
        values = self.policy.predict_values(obs).flatten()
        return RolloutStep(
            self.policy.to_env_action(chain[:, -1]),
            chain[:, -1],
            values,
            step_log_probs.sum(dim=1),
            {"chains": chain, "step_log_probs": step_log_probs},
        )

    def _score_old(self, batch: FieldRolloutSamples) -> dict[str, Tensor]:
        steps = self.policy.log_prob_steps(batch.observations, batch.fields["chains"])
        return {"log_probs": steps.sum(dim=1), "step_log_probs": steps}

    def denoising_discount(self) -> Tensor:
        """γ_denoise^(K′−1−i) for fine-tuned steps i = 0 … K′−1 (noisiest first), (K′,)."""
        ft = self.policy.ft_denoising_steps
        exponents = torch.arange(ft - 1, -1, -1, dtype=torch.float64, device=self.device)
        return self.gamma_denoising**exponents

    def reduce_log_prob(self, step_log_probs: Tensor) -> Tensor:
        """Per-step log-probs as ``log_prob_reduction`` says.

        "sum": unchanged; "paper": averaged over the action dims and clamped to
        :data:`PAPER_LOG_PROB_BOUNDS`.
        """
        if self.log_prob_reduction == "sum":
            return step_log_probs
        action_size = self.action_space.shape[0]  # type: ignore[index]
        return (step_log_probs / action_size).clamp(*PAPER_LOG_PROB_BOUNDS)

    def _policy_terms(self, batch: FieldRolloutSamples) -> PolicyTerms:
        """K′ log-ratios per row, their advantage discounts, the entropy and the values."""
        step_log_probs, entropy, values = self.policy.evaluate_chain(
            batch.observations, batch.fields["chains"]
        )
        new = self.reduce_log_prob(step_log_probs)
        old = self.reduce_log_prob(batch.fields["step_log_probs"].to(new.dtype))
        return PolicyTerms(
            log_ratio=new - old,
            log_prob=new.sum(dim=1),
            entropy=entropy,
            values=values,
            advantage_weights=self.denoising_discount(),
        )

    def _first_minibatch_stats(self, batch: FieldRolloutSamples) -> dict[str, float]:
        # Mean std of the fine-tuned steps (fixed by the schedule and the floor).
        stds = self.policy.step_stds()[self.policy.first_ft_step :]
        return {"flow/sigma_mean": float(stds.mean())}

    def _record_extra(self) -> None:
        self.logger.record("flow/num_steps", self.policy.num_steps)
        self.logger.record("flow/ft_denoising_steps", self.policy.ft_denoising_steps)
