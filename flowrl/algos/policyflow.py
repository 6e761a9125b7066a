"""PolicyFlow: PPO for flow policies with ratios from velocity differences (arXiv 2602.01156).

    model = PolicyFlow("PolicyFlowPolicy", "MultiGoal-v0")
    model.learn(200_000)

The policy acts by a = φ₁(z; o) + n (see :class:`~flowrl.policies.PolicyFlowPolicy`): the
flow's K-step ODE map from a latent z, plus Gaussian noise of a learned σ. A rollout step
stores z, the endpoint φ̂₁ and the times t_j at which the update will read the velocity; the
update needs no ODE: on the straight path x_t = (1 − t)·z + t·φ̂₁ it compares the current
velocity with the rollout policy's, and turns the difference into a ratio estimate
(:func:`flowrl.flow.ratio.velocity_difference_log_ratio`). The Brownian regularizer (weight
w_b, ``brownian_coef``) and the noise's entropy bonus (weight w_g, the core's ``ent_coef``)
keep the flow from collapsing onto one mode. Everything else is the shared on-policy core
(:class:`~flowrl.algos.on_policy.OnPolicyCore`).
"""

from __future__ import annotations

from typing import Any

from stable_baselines3.common.type_aliases import GymEnv
from torch import Tensor

from flowrl.algos.buffers import FieldRolloutSamples
from flowrl.algos.on_policy import OnPolicyCore, PolicyTerms, RolloutStep
from flowrl.flow.ratio import RATIO_ESTIMATORS, RatioEstimator, ratio_times
from flowrl.policies.policyflow import PolicyFlowPolicy

__all__ = ["PolicyFlow"]


class PolicyFlow(OnPolicyCore):
    """PPO on PolicyFlow's velocity-difference ratio, with the Brownian regularizer.

    Args:
        policy: ``"PolicyFlowPolicy"``, the class, or a ready :class:`PolicyFlowPolicy`
            (e.g. ``PolicyFlowPolicy.from_pretrained("bc.pt", obs_space, action_space)``).
        env: Env, VecEnv or registered id.
        brownian_coef: w_b, weight of the Brownian regularizer mean_j ‖η_j‖².
        num_ratio_times: J, times per sample at which the ratio reads the velocity
            difference (``ratio_estimator="paper"``; the grid estimator uses the K grid
            times).
        ratio_estimator: ``"paper"`` (J uniform times, mean of per-time ratios, as the
            paper) or ``"grid"`` (THE time grid, ratio of the mean difference; exact to first
            order for the K-step Euler map, exact for K = 1). See :mod:`flowrl.flow.ratio`.
        **kwargs: The on-policy core's arguments (:class:`OnPolicyCore`): ``ent_coef`` is
            w_g, the weight of the noise's entropy Σ_d ½·log(2πe·σ_d²); ``clip_range``
            (0.2, the paper's), ``learning_rate``, ``n_steps``, ``batch_size``,
            ``target_kl``, ``entropy_control``, ``policy_kwargs`` —
            :class:`PolicyFlowPolicy`'s —, ``seed``, ….
    """

    policy_aliases = {"PolicyFlowPolicy": PolicyFlowPolicy}  # noqa: RUF012 (SB3's class attribute)
    policy: PolicyFlowPolicy
    policy_base = PolicyFlowPolicy
    extra_loss_names = ("brownian",)

    def __init__(
        self,
        policy: str | type[PolicyFlowPolicy] | PolicyFlowPolicy,
        env: GymEnv | str,
        *,
        brownian_coef: float = 0.01,
        num_ratio_times: int = 8,
        ratio_estimator: RatioEstimator = "paper",
        **kwargs: Any,
    ):
        if ratio_estimator not in RATIO_ESTIMATORS:
            raise ValueError(
                f"ratio_estimator must be one of {RATIO_ESTIMATORS}, got {ratio_estimator!r}"
            )
        if isinstance(num_ratio_times, bool) or not isinstance(num_ratio_times, int):
            raise ValueError(f"num_ratio_times must be a positive int, got {num_ratio_times!r}")
        if num_ratio_times < 1:
            raise ValueError(f"num_ratio_times must be a positive int, got {num_ratio_times}")
        if not brownian_coef >= 0:
            raise ValueError(f"brownian_coef must be >= 0, got {brownian_coef}")
        self.brownian_coef = brownian_coef
        self.num_ratio_times = num_ratio_times
        self.ratio_estimator = ratio_estimator
        super().__init__(policy, env, **kwargs)

    @property
    def ratio_times_per_sample(self) -> int:
        """J: the K grid times for the grid estimator, else ``num_ratio_times``."""
        return self.policy.num_steps if self.ratio_estimator == "grid" else self.num_ratio_times

    def _rollout_fields(self) -> dict[str, tuple[int, ...]]:
        Da, J = self.action_space.shape[0], self.ratio_times_per_sample  # type: ignore[index]
        return {
            "latents": (Da,),
            "endpoints": (Da,),
            "times": (J,),
            # Scored before each update, in its minibatch layout (see _score_old).
            "old_velocities": (J, Da),
            "old_sigma": (Da,),
        }

    def _act(self, obs: Tensor) -> RolloutStep:
        sample = self.policy.sample(obs)
        times = ratio_times(
            self.ratio_estimator,
            obs.shape[0],
            self.num_ratio_times,
            self.policy.grid,
            device=obs.device,
            dtype=self.policy.dtype,
        )
        fields = {"latents": sample.latents, "endpoints": sample.endpoints, "times": times}
        values = self.policy.predict_values(obs).flatten()
        env_actions = self.policy.to_env_action(sample.actions)
        return RolloutStep(env_actions, sample.actions, values, sample.log_prob, fields)

    def _score_old(self, batch: FieldRolloutSamples) -> dict[str, Tensor]:
        f = batch.fields
        return self.policy.old_terms(
            batch.observations, f["latents"], f["endpoints"], batch.actions, f["times"]
        )

    def _policy_terms(self, batch: FieldRolloutSamples) -> PolicyTerms:
        """The velocity-difference log-ratio, the noise's entropy and the Brownian term."""
        f = batch.fields
        terms = self.policy.evaluate(
            batch.observations,
            f["latents"],
            f["endpoints"],
            batch.actions,
            f["times"],
            f["old_velocities"],
            f["old_sigma"],
            self.ratio_estimator,
        )
        return PolicyTerms(
            log_ratio=terms.log_ratio,
            # The estimated z-conditional log-density of the new policy (entropy control).
            log_prob=batch.old_log_prob + terms.log_ratio.detach(),
            entropy=terms.entropy,
            values=terms.values,
            losses={"brownian": (self.brownian_coef, terms.brownian.mean())},
        )

    def _first_minibatch_stats(self, batch: FieldRolloutSamples) -> dict[str, float]:
        obs_n = self.policy._obs_n(batch.observations)
        return {"flow/sigma_mean": float(self.policy.sigma(obs_n).mean())}

    def _record_extra(self) -> None:
        self.logger.record("flow/num_steps", self.policy.num_steps)
        self.logger.record("flow/ratio_times", self.ratio_times_per_sample)
