"""PolicyFlowPolicy: a flow's ODE map plus Gaussian noise on the action (PolicyFlow).

The policy of PolicyFlow (arXiv 2602.01156), in the normalized action box::

    z ~ N(0, c²I),   a = φ₁(z; o) + n,   n ~ N(0, σ²I),

where φ₁ is the noiseless K-step Euler map of the velocity field on THE time grid (the
same map BC trains and ReinFlow evaluates), c = ``initial_std`` (1 by default: the flow
keeps the spread it learned from data) and σ a learned standard deviation: one log-std per
action dimension by default, or a function of the observation (``state_dependent_std``).

Two faces:

* **env face** (Stable-Baselines3): ``predict(obs, deterministic=True)`` is the ODE from
  z = 0 without noise; ``deterministic=False`` samples z and n.
* **learner face**: ``sample`` (a rollout step: action, latent, endpoint, σ and the
  z-conditional log-density), ``path_velocities``, ``evaluate`` (a minibatch's ratio
  estimate, entropy, Brownian term and values, see :mod:`flowrl.flow.ratio`) and
  ``conditional_log_prob`` (the exact z-conditional density by ODE, for tests and
  diagnostics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.type_aliases import Schedule
from torch import Tensor, nn

from flowrl.flow.integrators import gaussian_entropy, gaussian_log_prob
from flowrl.flow.ratio import (
    RatioEstimator,
    brownian_residual,
    path_points,
    velocity_difference_log_ratio,
)
from flowrl.nets.mlp import MLP
from flowrl.policies.base import FlowPolicyBase, check_sigma_bounds

__all__ = ["PolicyFlowPolicy", "PolicyFlowSample", "PolicyFlowTerms"]


@dataclass(frozen=True)
class PolicyFlowSample:
    """One rollout step of B observations.

    Attributes:
        actions: a = φ̂₁ + n, shape (B, Da), normalized and unclipped.
        latents: z, shape (B, Da).
        endpoints: φ̂₁(z), shape (B, Da).
        sigma: σ̂, shape (B, Da).
        log_prob: log N(a; φ̂₁(z), σ̂²) summed over dims, shape (B,), float64.
    """

    actions: Tensor
    latents: Tensor
    endpoints: Tensor
    sigma: Tensor
    log_prob: Tensor


@dataclass(frozen=True)
class PolicyFlowTerms:
    """A minibatch scored by the current parameters.

    Attributes:
        log_ratio: log ρ per sample, shape (M,), float64, with gradient.
        entropy: Entropy of the Gaussian noise n, Σ_d ½·log(2πe·σ_d²), shape (M,).
        brownian: mean_j ‖η_j‖² of the Brownian regularizer, shape (M,).
        sigma: σ, shape (M, Da).
        values: V(o), shape (M,).
    """

    log_ratio: Tensor
    entropy: Tensor
    brownian: Tensor
    sigma: Tensor
    values: Tensor


class PolicyFlowPolicy(FlowPolicyBase):
    """Flow ODE map plus learned Gaussian noise, with a value function.

    Args:
        observation_space: Flat Box observations (Do,).
        action_space: Box actions (Da,).
        lr_schedule: Learning-rate schedule of the actor (velocity net and σ).
        sigma_init: σ at the start, in normalized action units.
        sigma_min: Lower bound of σ.
        sigma_max: Upper bound of σ.
        state_dependent_std: σ(o) from an MLP on the normalized observation instead of one
            learned log-std per action dimension.
        std_hidden: Hidden widths of that MLP.
        initial_std: Standard deviation c of the latent z ~ N(0, c²I) (0: z = 0, the flow
            then gives one action per state and only n spreads it).
        **kwargs: :class:`~flowrl.policies.base.FlowPolicyBase`'s arguments: ``pretrained``
            (a BC :class:`FlowActor` or its checkpoint, copied; a frozen copy is kept as
            ``reference``), ``actor_config``, ``num_steps`` (K of φ₁; default the actor's),
            ``value_hidden``, ``optimizer_class``, ``optimizer_kwargs``.

    Raises:
        ValueError: For σ bounds that are not 0 < sigma_min <= sigma_init <= sigma_max, a
            negative ``initial_std``, K < 1, or spaces flow policies cannot act in; and for
            what :class:`~flowrl.policies.base.FlowPolicyBase` refuses (a non-Euler actor, a
            shortcut actor's untrained K, a pretrained actor that does not fit the env).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        *,
        sigma_init: float = 0.3,
        sigma_min: float = 0.01,
        sigma_max: float = 1.0,
        state_dependent_std: bool = False,
        std_hidden: tuple[int, ...] = (64, 64),
        initial_std: float = 1.0,
        **kwargs: Any,
    ):
        check_sigma_bounds(sigma_min, sigma_max)
        if not sigma_min <= sigma_init <= sigma_max:
            raise ValueError(
                f"sigma_init={sigma_init} must lie in [sigma_min, sigma_max] = "
                f"[{sigma_min}, {sigma_max}]"
            )
        self.sigma_init, self.sigma_min, self.sigma_max = (
            float(sigma_init),
            float(sigma_min),
            float(sigma_max),
        )
        self.state_dependent_std = bool(state_dependent_std)
        self.std_hidden = tuple(std_hidden)
        super().__init__(
            observation_space, action_space, lr_schedule, initial_std=initial_std, **kwargs
        )

    def _build_noise(self, obs_dim: int, action_dim: int) -> None:
        if self.state_dependent_std:
            # Zero last layer: σ(o) = sigma_init everywhere at the start.
            self.std_net = MLP(obs_dim, action_dim, self.std_hidden, act="tanh", zero_last=True)
        else:
            self.log_std = nn.Parameter(torch.full((action_dim,), math.log(self.sigma_init)))

    def _actor_parameters(self) -> list[nn.Parameter]:
        noise = self.std_net.parameters() if self.state_dependent_std else [self.log_std]
        return list(self.actor.parameters()) + list(noise)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            sigma_init=self.sigma_init,
            sigma_min=self.sigma_min,
            sigma_max=self.sigma_max,
            state_dependent_std=self.state_dependent_std,
            std_hidden=self.std_hidden,
        )
        return data

    # ------------------------------------------------------------------ pieces

    def sigma(self, obs_n: Tensor) -> Tensor:
        """σ ∈ [σ_min, σ_max], shape (B, Da), for normalized observations (B, Do)."""
        if self.state_dependent_std:
            log_std = self.std_net(obs_n) + math.log(self.sigma_init)
        else:
            log_std = self.log_std.expand(obs_n.shape[0], -1)
        return torch.exp(log_std.clamp(math.log(self.sigma_min), math.log(self.sigma_max)))

    def sample(self, obs: Tensor, generator: torch.Generator | None = None) -> PolicyFlowSample:
        """A rollout step: z, φ̂₁(z), n and the z-conditional log-density of a.

        Args:
            obs: Raw observations, shape (B, Do).
            generator: RNG for z and n.
        """
        obs_n = self._obs_n(obs)
        latents = self._initial_state(obs, generator)
        endpoints = self._endpoint(obs_n, latents)
        sigma = self.sigma(obs_n)
        actions = endpoints + sigma * self._noise(obs, generator)
        log_prob = gaussian_log_prob(actions, endpoints, sigma)
        return PolicyFlowSample(actions, latents, endpoints, sigma, log_prob)

    def deterministic_action(self, obs: Tensor) -> Tensor:
        """φ₁(0; o), the ODE from z = 0 without noise, shape (B, Da) (normalized)."""
        shape = (obs.shape[0], self.actor.config.action_dim)
        return self.ode_endpoint(obs, torch.zeros(shape, device=obs.device, dtype=self.dtype))

    def path_velocities(
        self, obs_n: Tensor, latents: Tensor, endpoints: Tensor, times: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Path points x_j and the velocity there, each (B, J, Da), in one network call.

        Args:
            obs_n: Normalized observations, shape (B, Do).
            latents: z, shape (B, Da).
            endpoints: φ̂₁(z), shape (B, Da).
            times: t_j, shape (B, J).
        """
        x = path_points(latents, endpoints, times)
        J = times.shape[1]
        cond = obs_n.repeat_interleave(J, dim=0)
        velocity = self.actor.velocity_fn(cond, self.grid)
        return x, velocity(times.flatten(), x.flatten(0, 1)).view_as(x)

    def old_terms(
        self, obs: Tensor, latents: Tensor, endpoints: Tensor, actions: Tensor, times: Tensor
    ) -> dict[str, Tensor]:
        """The rollout policy's quantities for a minibatch, scored before any update.

        Returns:
            ``{"old_velocities": v̂ (B, J, Da), "old_sigma": σ̂ (B, Da), "log_probs":
            log N(a; φ̂₁, σ̂²) (B,)}``.
        """
        obs_n = self._obs_n(obs)
        _, velocities = self.path_velocities(obs_n, latents, endpoints, times)
        sigma = self.sigma(obs_n)
        log_prob = gaussian_log_prob(self._cast(actions), endpoints, sigma)
        return {"old_velocities": velocities, "old_sigma": sigma, "log_probs": log_prob}

    def evaluate(
        self,
        obs: Tensor,
        latents: Tensor,
        endpoints: Tensor,
        actions: Tensor,
        times: Tensor,
        old_velocities: Tensor,
        old_sigma: Tensor,
        estimator: RatioEstimator = "paper",
    ) -> PolicyFlowTerms:
        """Score a minibatch of rollout steps with the current parameters (no ODE).

        Args:
            obs: Raw observations, shape (M, Do).
            latents: z, shape (M, Da).
            endpoints: φ̂₁(z) from the rollout, shape (M, Da).
            actions: a, shape (M, Da).
            times: t_j, shape (M, J).
            old_velocities: v̂(t_j, x_j), shape (M, J, Da).
            old_sigma: σ̂, shape (M, Da).
            estimator: ``"paper"`` or ``"grid"``
                (:func:`flowrl.flow.ratio.velocity_difference_log_ratio`).
        """
        obs_n = self._obs_n(obs)
        x, velocities = self.path_velocities(obs_n, latents, endpoints, times)
        sigma = self.sigma(obs_n)
        noise = self._cast(actions) - endpoints
        log_ratio = velocity_difference_log_ratio(
            noise, velocities - old_velocities, sigma, old_sigma, estimator
        )
        eta = brownian_residual(
            times.flatten(), x.flatten(0, 1), velocities.flatten(0, 1), old_velocities.flatten(0, 1)
        )
        brownian = eta.square().sum(dim=-1).view(times.shape).mean(dim=1)
        return PolicyFlowTerms(
            log_ratio=log_ratio,
            entropy=gaussian_entropy(sigma, dim=-1),
            brownian=brownian,
            sigma=sigma,
            values=self.value_net(obs_n).flatten(),
        )

    def conditional_log_prob(self, obs: Tensor, latents: Tensor, actions: Tensor) -> Tensor:
        """Exact log N(a; φ₁(z; o), σ(o)²) with φ₁ integrated on THE grid, shape (B,).

        Args:
            obs: Raw observations, shape (B, Do).
            latents: z, shape (B, Da).
            actions: a (normalized), shape (B, Da).
        """
        obs_n = self._obs_n(obs)
        endpoints = self._endpoint(obs_n, latents)
        return gaussian_log_prob(self._cast(actions), endpoints, self.sigma(obs_n))

    # ------------------------------------------------------------------ SB3 faces

    def forward(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, ...]:
        """Env actions (B, Da), values (B,) and log-probs (B,) (0 when deterministic)."""
        if deterministic:
            actions = self.deterministic_action(obs)
            log_prob = torch.zeros(obs.shape[0], device=obs.device, dtype=torch.float64)
        else:
            sampled = self.sample(obs)
            actions, log_prob = sampled.actions, sampled.log_prob
        values = self.predict_values(obs).flatten()
        return self.to_env_action(actions), values, log_prob

    def _predict(self, observation: Tensor, deterministic: bool = False) -> Tensor:
        """Env actions (B, Da) for SB3's ``predict``."""
        if deterministic:
            return self.to_env_action(self.deterministic_action(observation))
        return self.to_env_action(self.sample(observation).actions)
