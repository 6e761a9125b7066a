"""FPO: PPO with ratios from conditional flow-matching losses (arXiv 2507.21053), and FPO++.

    model = FPO(FPOPolicy.from_pretrained("bc.pt", env.observation_space, env.action_space), env)
    model.learn(1_000_000)
    fpo_pp = FPO("FPOPolicy", env, variant="fpo++")  # FPO++ (arXiv 2602.02481)

The policy acts by the K-step Euler ODE from a⁰ ~ N(0, c²I) (:class:`~flowrl.policies.FPOPolicy`)
and has no tractable likelihood. A rollout step stores N pairs (τ_i, ε_i) beside the action;
the update scores the per-pair flow-matching losses ℓ_i (:meth:`FPOPolicy.cfm_losses`) under
the rollout weights (before the first step) and the current ones, and uses

    FPO:    log ρ = mean_i ℓ_old,i − mean_i ℓ_θ,i           one ratio per sample, (M,);
    FPO++:  log ρ_i = ℓ_old,i − ℓ_θ,i                        one ratio per pair, (M, N),

each clipped with its sample's advantage (the core's (M, N) log-ratio; the surrogate is the
mean over all pairs). FPO++ also replaces PPO's clip for negative advantages by SPO's
quadratic trust region (:meth:`FPO._surrogate`):

    ψ(ρ, A) = min(ρA, clip(ρ, 1 − ε, 1 + ε)A)        if A ≥ 0,
    ψ(ρ, A) = ρA − |A|/(2ε)·(ρ − 1)²                 if A < 0.

Since mean_i ℓ_i is an ELBO of log π up to constants (the FPO paper's argument), the stored
per-sample "log-probability" — what the core's sampler check compares and what
``train/neg_log_prob_mean`` logs — is −mean_i ℓ_i; the entropy bonus is 0 (no tractable
entropy). Besides the core's scalars an update logs ``flow/cfm_loss_mean`` (mean ℓ_old of
its first minibatch), ``flow/num_mc``, ``flow/num_steps`` and ``flow/sigma_mean`` (c, the
std of the only injected noise, a⁰). Everything else is the shared on-policy core
(:class:`~flowrl.algos.on_policy.OnPolicyCore`).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from stable_baselines3.common.type_aliases import GymEnv
from torch import Tensor

from flowrl.algos.buffers import FieldRolloutSamples
from flowrl.algos.on_policy import OnPolicyCore, PolicyTerms, RolloutStep
from flowrl.policies.fpo import FPOPolicy

__all__ = [
    "CFM_REDUCTIONS",
    "PAPER_CLIP_RANGE",
    "PAPER_NUM_MC",
    "VARIANTS",
    "FPO",
    "check_num_mc",
]

# The FPO reference code's defaults (playground/src/flow_policy/fpo.py, FpoConfig:
# n_samples_per_action = 8, clipping_epsilon = 0.05); FPO++ keeps ε = 0.05 for locomotion.
PAPER_NUM_MC = 8
PAPER_CLIP_RANGE = 0.05

Variant = Literal["fpo", "fpo++"]
VARIANTS: tuple[str, ...] = ("fpo", "fpo++")
CfmReduction = Literal["sum", "mean"]
CFM_REDUCTIONS: tuple[str, ...] = ("sum", "mean")


def check_num_mc(num_mc: object) -> int:
    """N, the (τ, ε) pairs stored per action (FPO, NFT), checked: a positive int.

    Raises:
        ValueError: Naming ``num_mc`` and FPO's value.
    """
    if isinstance(num_mc, bool) or not isinstance(num_mc, (int, np.integer)) or num_mc < 1:
        raise ValueError(
            f"num_mc (the (τ, ε) pairs per action) must be a positive int, got {num_mc!r}; "
            f"the FPO paper uses {PAPER_NUM_MC}"
        )
    return int(num_mc)


class FPO(OnPolicyCore):
    """Flow Policy Optimization: PPO on flow-matching-loss ratios, with the FPO++ options.

    Args:
        policy: ``"FPOPolicy"``, the class, or a ready :class:`FPOPolicy` (e.g.
            ``FPOPolicy.from_pretrained("bc.pt", obs_space, action_space)``).
        env: Env, VecEnv or registered id.
        variant: ``"fpo"`` (the FPO paper: one ratio per sample from the averaged losses,
            PPO's clip) or ``"fpo++"`` (FPO++: ``per_pair_ratios`` and
            ``asymmetric_trust_region`` both on). Sets the defaults of the two flags below.
            Entropy control (Clip-Cov / KL-Cov) needs both flags off.
        per_pair_ratios: One clipped ratio per (τ, ε) pair instead of one per sample
            (None: as ``variant`` says).
        asymmetric_trust_region: PPO's clip for A ≥ 0, SPO's quadratic penalty
            |A|/(2ε)·(ρ − 1)² for A < 0 (None: as ``variant`` says).
        num_mc: N_mc, (τ, ε) pairs stored per action (default :data:`PAPER_NUM_MC`, 8).
        cfm_reduction: How ℓ_i reduces the action dims: ``"sum"`` — ‖·‖², the FPO paper's
            formula and flowrl's convention (log-probs are sums); ``"mean"`` — divided by
            Da, as the FPO reference code. The clip range does not transfer between the two
            when Da > 1.
        **kwargs: The on-policy core's arguments (:class:`OnPolicyCore`): ``clip_range``
            (default :data:`PAPER_CLIP_RANGE`, 0.05), ``learning_rate``, ``n_steps``,
            ``batch_size``, ``target_kl``, ``log_ratio_clip``, ``bc_coef``,
            ``policy_kwargs`` — :class:`FPOPolicy`'s —, ``seed``, …. ``ent_coef`` has
            nothing to act on: FPO's entropy bonus is 0 (the policy has no tractable
            entropy).

    Raises:
        ValueError: For an unknown ``variant`` or ``cfm_reduction``, ``num_mc`` < 1 or not
            an int, a flag that is not a bool, or either FPO++ option together with
            ``entropy_control``; and for what the core refuses.
    """

    policy_aliases = {"FPOPolicy": FPOPolicy}  # noqa: RUF012 (SB3's class attribute)
    policy: FPOPolicy
    policy_base = FPOPolicy

    def __init__(
        self,
        policy: str | type[FPOPolicy] | FPOPolicy,
        env: GymEnv | str,
        *,
        variant: Variant = "fpo",
        per_pair_ratios: bool | None = None,
        asymmetric_trust_region: bool | None = None,
        num_mc: int = PAPER_NUM_MC,
        cfm_reduction: CfmReduction = "sum",
        **kwargs: Any,
    ):
        if variant not in VARIANTS:
            raise ValueError(
                f"variant must be one of {VARIANTS} ('fpo++' turns on per_pair_ratios and "
                f"asymmetric_trust_region), got {variant!r}"
            )
        plus = variant == "fpo++"
        flags = {
            "per_pair_ratios": per_pair_ratios,
            "asymmetric_trust_region": asymmetric_trust_region,
        }
        for name, value in flags.items():
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{name} must be True, False or None (as variant), got {value!r}")
        num_mc = check_num_mc(num_mc)
        if cfm_reduction not in CFM_REDUCTIONS:
            raise ValueError(
                f"cfm_reduction must be one of {CFM_REDUCTIONS} (sum or mean over the action "
                f"dims), got {cfm_reduction!r}"
            )
        self.variant = variant
        self.per_pair_ratios = plus if per_pair_ratios is None else per_pair_ratios
        self.asymmetric_trust_region = (
            plus if asymmetric_trust_region is None else asymmetric_trust_region
        )
        control = kwargs.get("entropy_control")
        if control is not None and (self.per_pair_ratios or self.asymmetric_trust_region):
            raise ValueError(
                f"entropy_control={control!r} modifies PPO's surrogate of one ratio per "
                "sample, which per_pair_ratios and asymmetric_trust_region (variant='fpo++') "
                "replace: use variant='fpo' with both flags off, or entropy_control=None"
            )
        self.num_mc = int(num_mc)
        self.cfm_reduction = cfm_reduction
        kwargs.setdefault("clip_range", PAPER_CLIP_RANGE)
        super().__init__(policy, env, **kwargs)

    # ================================================================== rollout

    def _rollout_fields(self) -> dict[str, tuple[int, ...]]:
        Da, N = self.action_space.shape[0], self.num_mc  # type: ignore[index]
        return {
            "taus": (N,),
            "noises": (N, Da),
            # ℓ_old per pair, scored before each update in its minibatch layout (_score_old).
            "old_losses": (N,),
        }

    def _act(self, obs: Tensor) -> RolloutStep:
        actions = self.policy.sample(obs)
        taus, noises = self.policy.draw_pairs(obs, self.num_mc)
        losses = self.policy.cfm_losses(obs, actions, taus, noises)
        values = self.policy.predict_values(obs).flatten()
        env_actions = self.policy.to_env_action(actions)
        fields = {"taus": taus, "noises": noises}
        return RolloutStep(env_actions, actions, values, self.elbo(losses), fields)

    # ================================================================== update

    def reduce_losses(self, losses: Tensor) -> Tensor:
        """ℓ_i as the ratio uses it, in float64: summed over Da, or averaged (``"mean"``).

        Args:
            losses: Per-pair losses summed over the action dims, shape (M, N).
        """
        wide = losses.double()
        if self.cfm_reduction == "mean":
            return wide / self.action_space.shape[0]  # type: ignore[index]
        return wide

    def elbo(self, losses: Tensor) -> Tensor:
        """The per-sample "log-probability" −mean_i ℓ_i, shape (M,), float64.

        An ELBO of log π(a | o) up to constants and scale (FPO's argument); FPO's log-ratio
        is exactly its difference.

        Args:
            losses: Per-pair losses summed over the action dims, shape (M, N).
        """
        return -self.reduce_losses(losses).mean(dim=1)

    def _score_old(self, batch: FieldRolloutSamples) -> dict[str, Tensor]:
        f = batch.fields
        losses = self.policy.cfm_losses(batch.observations, batch.actions, f["taus"], f["noises"])
        return {"old_losses": losses, "log_probs": self.elbo(losses)}

    def _policy_terms(self, batch: FieldRolloutSamples) -> PolicyTerms:
        """The loss-difference log-ratio, (M,) or (M, N) per pair; no entropy bonus."""
        f = batch.fields
        terms = self.policy.evaluate(batch.observations, batch.actions, f["taus"], f["noises"])
        new = self.reduce_losses(terms.losses)
        per_pair = self.reduce_losses(f["old_losses"]) - new
        log_ratio = per_pair if self.per_pair_ratios else per_pair.mean(dim=1)
        return PolicyTerms(
            log_ratio=log_ratio,
            log_prob=-new.detach().mean(dim=1),
            entropy=torch.zeros_like(terms.values),
            values=terms.values,
        )

    def _surrogate(
        self, advantages: Tensor, ratio: Tensor, log_ratio: Tensor, clip_range: float, cov: Tensor
    ) -> tuple[Tensor, float]:
        """PPO's clipped surrogate, or FPO++'s asymmetric trust region.

        With ``asymmetric_trust_region`` each ratio ρ with advantage A contributes
        −min(ρA, clip(ρ, 1 − ε, 1 + ε)A) if A ≥ 0 and −(ρA − |A|/(2ε)·(ρ − 1)²) if A < 0
        (SPO's penalty keeps a gradient pulling ρ back to 1 where PPO's clip has none); the
        loss is the mean over every entry.
        """
        if not self.asymmetric_trust_region:
            return super()._surrogate(advantages, ratio, log_ratio, clip_range, cov)
        advantages = advantages.to(ratio.dtype)  # |A|/(2ε) in float64, as the ratio
        ppo = torch.min(
            advantages * ratio, advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
        )
        spo = advantages * ratio - advantages.abs() / (2 * clip_range) * (ratio - 1).square()
        return -torch.where(advantages >= 0, ppo, spo).mean(), 0.0

    def _first_minibatch_stats(self, batch: FieldRolloutSamples) -> dict[str, float]:
        return {
            "flow/cfm_loss_mean": float(self.reduce_losses(batch.fields["old_losses"]).mean()),
            # The std of the policy's only injected noise, a⁰ ~ N(0, c²I): the counterpart
            # of ReinFlow's per-step σ and PolicyFlow's endpoint σ.
            "flow/sigma_mean": self.policy.initial_std,
        }

    def _record_extra(self) -> None:
        self.logger.record("flow/num_steps", self.policy.num_steps)
        self.logger.record("flow/num_mc", self.num_mc)
