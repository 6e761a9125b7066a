"""NFT: DiffusionNFT's forward-process policy improvement for flow policies (arXiv 2509.16117).

    model = NFT(FPOPolicy.from_pretrained("bc.pt", env.observation_space, env.action_space), env)
    model.learn(100_000)

The same loss that fine-tunes generators with a reward (:mod:`flowrl.generative.finetune`)
improves a flow policy with advantages: the policy acts by its K-step Euler ODE from
a⁰ ~ N(0, c²I) (:class:`~flowrl.policies.FPOPolicy`: any sampler would do, the loss never
sees it); a rollout step stores N pairs (τ_i, ε_i) beside the action, as FPO does. Before
the update the rollout weights score, in the update's minibatch layout, the velocities
v_old(τ_i, x_i, o) at the pairs' path points x_i = (1 − τ_i)·ε_i + τ_i·a. Each minibatch
then maps its normalized advantages to optimality probabilities
r = clip(A, −c, c)/(2c) + 1/2 and minimizes

    ℓ = mean_i [ r·‖v⁺_i − u_i‖² + (1 − r)·‖v⁻_i − u_i‖² ] / β,
    v⁺ = (1 − β)·v_old + β·v_θ,   v⁻ = (1 + β)·v_old − β·v_θ,   u_i = a − ε_i

(:func:`flowrl.flow.losses.nft_loss`): flow matching towards actions with positive
advantage and away from the others, held near the rollout policy by β²‖v_θ − v_old‖².
No likelihood and no ODE enter the loss; its backward pass is one network call on M·N rows.

Everything else is the shared on-policy core (:class:`~flowrl.algos.on_policy.OnPolicyCore`):
GAE, the value net and its warm-up, advantage normalization (global under torchrun),
data-parallel gradients, the NaN refusal, the W2 regularizer (``bc_coef``), logging. The
core's ratio — here FPO's flow-matching-loss ratio exp(mean_i ℓ_old,i − mean_i ℓ_θ,i), a
measure of how far the update has moved the policy — is kept as a diagnostic: it must be 1
on the first minibatch (every update checks it), feeds ``target_kl`` and
``train/approx_kl``, and ``clip_range`` only sets the logged ``train/clip_fraction``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from stable_baselines3.common.type_aliases import GymEnv
from torch import Tensor

from flowrl.algos.buffers import FieldRolloutSamples
from flowrl.algos.fpo import check_num_mc
from flowrl.algos.on_policy import OnPolicyCore, PolicyTerms, RolloutStep
from flowrl.flow.losses import nft_loss, optimality_probability
from flowrl.policies.fpo import FPOPolicy

__all__ = ["DEFAULT_LEARNING_RATE", "NFT"]

# On the Pendulum learning test's start (60k env steps, FPO's settings, seed 0) 3e-4 changed
# the deterministic return by +5, 1e-3 by +680 (docs/nft.md): the forward-process loss takes
# smaller steps than PPO's surrogate at the same rate.
DEFAULT_LEARNING_RATE = 1e-3


class NFT(OnPolicyCore):
    """DiffusionNFT for flow policies: negative-aware flow matching on rollout actions.

    Args:
        policy: ``"FPOPolicy"``, the class, or a ready :class:`FPOPolicy` (e.g.
            ``FPOPolicy.from_pretrained("bc.pt", obs_space, action_space)``).
        env: Env, VecEnv or registered id.
        beta: β > 0 of the implicit policies: the step's trust region (the loss holds v_θ
            near v_old with β²‖v_θ − v_old‖²; the paper's default 1).
        clip_max: c > 0: normalized advantages are clipped to ±c, then r = A/(2c) + 1/2.
        num_mc: N, (τ, ε) pairs stored per action (path points the loss trains on).
        **kwargs: The on-policy core's arguments (:class:`OnPolicyCore`):
            ``learning_rate`` (default :data:`DEFAULT_LEARNING_RATE`, 1e-3), ``n_steps``,
            ``batch_size``, ``n_epochs``, ``target_kl`` (on the flow-matching-loss ratio),
            ``bc_coef``, ``critic_warmup_updates``,
            ``policy_kwargs`` — :class:`FPOPolicy`'s —, ``seed``, …. ``ent_coef`` has
            nothing to act on (no tractable entropy); ``entropy_control`` is refused (it
            selects samples of PPO's surrogate, which NFT does not have).

    Raises:
        ValueError: For β or c not positive and finite, ``num_mc`` < 1, or
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
        beta: float = 1.0,
        clip_max: float = 1.0,
        num_mc: int = 8,
        **kwargs: Any,
    ):
        for name, value in (("beta", beta), ("clip_max", clip_max)):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (math.isfinite(value) and value > 0)
            ):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if kwargs.get("entropy_control") is not None:
            raise ValueError(
                f"entropy_control={kwargs['entropy_control']!r} acts on PPO's surrogate, which "
                "NFT replaces by its forward-process loss: use entropy_control=None"
            )
        self.beta = float(beta)
        self.clip_max = float(clip_max)
        self.num_mc = check_num_mc(num_mc)
        kwargs.setdefault("learning_rate", DEFAULT_LEARNING_RATE)
        super().__init__(policy, env, **kwargs)

    # ================================================================== rollout

    def _rollout_fields(self) -> dict[str, tuple[int, ...]]:
        Da, N = self.action_space.shape[0], self.num_mc  # type: ignore[index]
        return {
            "taus": (N,),
            "noises": (N, Da),
            # Scored before each update in its minibatch layout (_score_old).
            "old_velocities": (N, Da),
            "old_losses": (N,),
        }

    def _act(self, obs: Tensor) -> RolloutStep:
        actions = self.policy.sample(obs)
        taus, noises = self.policy.draw_pairs(obs, self.num_mc)
        terms = self.policy.pair_velocities(obs, actions, taus, noises)
        env_actions = self.policy.to_env_action(actions)
        fields = {"taus": taus, "noises": noises}
        return RolloutStep(env_actions, actions, terms.values, self._elbo(terms.losses), fields)

    # ================================================================== update

    @staticmethod
    def _elbo(losses: Tensor) -> Tensor:
        """−mean_i ℓ_i, (M,) float64: the "log-probability" the core's checks compare."""
        return -losses.double().mean(dim=1)

    def _score_old(self, batch: FieldRolloutSamples) -> dict[str, Tensor]:
        f = batch.fields
        terms = self.policy.pair_velocities(
            batch.observations, batch.actions, f["taus"], f["noises"]
        )
        return {
            "old_velocities": terms.velocities,  # type: ignore[dict-item]
            "old_losses": terms.losses,
            "log_probs": self._elbo(terms.losses),
        }

    def _policy_terms(self, batch: FieldRolloutSamples) -> PolicyTerms:
        f = batch.fields
        terms = self.policy.pair_velocities(
            batch.observations, batch.actions, f["taus"], f["noises"]
        )
        log_prob = self._elbo(terms.losses)
        return PolicyTerms(
            log_ratio=log_prob - self._elbo(f["old_losses"]),
            log_prob=log_prob.detach(),
            entropy=torch.zeros_like(terms.values),
            values=terms.values,
            extras={
                "velocities": terms.velocities,  # type: ignore[dict-item]
                "old_velocities": f["old_velocities"],
                "targets": terms.targets,  # type: ignore[dict-item]
            },
        )

    def _policy_loss(
        self,
        terms: PolicyTerms,
        advantages: Tensor,
        ratio: Tensor,
        log_ratio: Tensor,
        clip_range: float,
        cov: Tensor,
    ) -> tuple[Tensor, float]:
        """:func:`~flowrl.flow.losses.nft_loss` over every (sample, pair), r from A."""
        x = terms.extras
        velocities = x["velocities"]
        rows, pairs, dim = velocities.shape
        r = optimality_probability(advantages, self.clip_max).to(velocities.dtype)
        loss = nft_loss(
            velocities.reshape(rows * pairs, dim),
            x["old_velocities"].reshape(rows * pairs, dim).to(velocities.dtype),
            x["targets"].reshape(rows * pairs, dim),
            r.repeat_interleave(pairs),
            beta=self.beta,
        )
        return loss, 0.0

    def _first_minibatch_stats(self, batch: FieldRolloutSamples) -> dict[str, float]:
        return {
            "flow/cfm_loss_mean": float(batch.fields["old_losses"].double().mean()),
            "flow/sigma_mean": self.policy.initial_std,
        }

    def _record_extra(self) -> None:
        self.logger.record("flow/num_steps", self.policy.num_steps)
        self.logger.record("flow/num_mc", self.num_mc)
        self.logger.record("flow/nft_beta", self.beta)
