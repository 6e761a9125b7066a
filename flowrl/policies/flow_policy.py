"""FlowPolicy: an SB3 policy whose actions come from a noise-injected flow (ReinFlow).

Two faces:

* **env face** (Stable-Baselines3): ``predict(obs, state, episode_start, deterministic)``.
  ``deterministic=True`` integrates the noiseless ODE from a⁰ = 0 (the prior's mode), so it
  is a deterministic function of the observation; otherwise a noisy chain is sampled.
* **learner face**: ``sample_chain``, ``step_distribution``, ``log_prob_chain``,
  ``entropy_chain``, ``bc_regularizer``, ``predict_values``.

The chain (ReinFlow, arXiv 2505.22094) on THE K-step grid (t_k, Δt_k), in the normalized
action box::

    a⁰ ~ N(0, c²I),   a^{k+1} = a^k + v_θ(t_k, a^k, o)·Δt_k + σ_φ(t_k, o)·ε_k,

with c = ``initial_std`` (default 0: a⁰ = 0) and σ_φ a small MLP squashed into
[σ_min, σ_max]. Each transition is Gaussian, so ``log_prob_chain`` is exact. The env
receives a^K mapped to its bounds (and clipped); the chain itself is stored unclipped, as
PPO stores unclipped Gaussian actions.
"""

from __future__ import annotations

from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.type_aliases import Schedule
from torch import Tensor, nn

from flowrl.flow.integrators import (
    NoisyChain,
    gaussian_entropy,
    integrate,
    noisy_chain_log_prob,
    noisy_euler_transition,
    sample_noisy_chain,
)
from flowrl.flow.times import time_grid
from flowrl.nets.embeddings import SinusoidalEmbedding
from flowrl.nets.mlp import MLP
from flowrl.policies.base import FlowPolicyBase, check_sigma_bounds, check_spaces

__all__ = ["FlowPolicy", "check_spaces"]


class FlowPolicy(FlowPolicyBase):
    """Noise-injected flow policy with a learned noise scale and a value function.

    Args:
        observation_space: Flat Box observations (Do,).
        action_space: Box actions (Da,).
        lr_schedule: Learning-rate schedule of the actor (velocity + noise networks).
        sigma_min: Lower bound of σ_φ (normalized action units).
        sigma_max: Upper bound of σ_φ at the start of training (a schedule may lower it).
        noise_hidden: Hidden widths of the noise network.
        **kwargs: :class:`~flowrl.policies.base.FlowPolicyBase`'s arguments: ``pretrained``
            (a BC :class:`FlowActor` or its checkpoint), ``actor_config``, ``num_steps``,
            ``initial_std``, ``value_hidden``, ``optimizer_class``, ``optimizer_kwargs``.

    ``initial_std`` (c, the chain start a⁰ ~ N(0, c²I)) defaults to 0 here: every chain starts
    at a⁰ = 0, the start of the deterministic ODE that ``predict(deterministic=True)``
    integrates, so PPO improves the very path that is evaluated and exploration comes from
    σ_φ alone. With c = 1 (a⁰ drawn as in BC training) PPO improved the stochastic policy on
    Hopper-v5 while the deterministic return fell below the BC start (1178 → 825 and 1049 in
    300k steps, 2 seeds), because the spread a BC flow inherits from a⁰ dwarfs σ_φ and the
    likelihood conditions on a⁰; with c = 0 the same runs went to 1591, 3233 and 3113 (3
    seeds). The a⁰ term of the likelihood uses c (omitted for c = 0); it does not depend on
    the parameters.
    """

    # The rollout step, the scoring of stored chains and the deterministic action.
    compiled_methods = ("_rollout_math", "_evaluate_math", "_log_prob_math", "_ode_chain")

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        *,
        sigma_min: float = 0.10,
        sigma_max: float = 0.24,
        noise_hidden: tuple[int, ...] = (64, 64),
        **kwargs: Any,
    ):
        check_sigma_bounds(sigma_min, sigma_max)
        self._sigma_bounds = (float(sigma_min), float(sigma_max))
        self.noise_hidden = tuple(noise_hidden)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _build_noise(self, obs_dim: int, action_dim: int) -> None:
        self.sigma_min = self._sigma_bounds[0]
        self.register_buffer("sigma_max", torch.tensor(self._sigma_bounds[1]))
        self._sigma_max_init = self._sigma_bounds[1]
        self.noise_time_embedding = SinusoidalEmbedding(16)
        self.noise_net = MLP(
            obs_dim + 16, action_dim, self.noise_hidden, act="tanh", zero_last=True
        )

    def _actor_parameters(self) -> list[nn.Parameter]:
        params = list(self.actor.parameters()) + list(self.noise_net.parameters())
        return params + list(self.noise_time_embedding.parameters())

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            sigma_min=self.sigma_min,
            sigma_max=self._sigma_max_init,
            noise_hidden=self.noise_hidden,
        )
        return data

    # ------------------------------------------------------------------ noise and value

    def sigma(self, t: Tensor, obs_n: Tensor) -> Tensor:
        """σ_φ(t, o) ∈ [σ_min, σ_max], shape (B, Da), from times (B,) and normalized obs."""
        raw = self.noise_net(torch.cat([obs_n, self.noise_time_embedding(t)], dim=-1))
        return self.sigma_min + (self.sigma_max - self.sigma_min) * torch.sigmoid(raw)

    # ------------------------------------------------------------------ chains

    def _fields(self, obs: Tensor) -> tuple[Tensor, Any, Any]:
        """Normalized obs and the (velocity, std) fields of the chain conditioned on them."""
        obs_n = self._obs_n(obs)
        velocity = self.actor.velocity_fn(obs_n, self.grid)
        return obs_n, velocity, lambda t, x: self.sigma(t, obs_n)

    def _draws(self, obs: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """The chain's random inputs: a⁰ (B, Da), then the K injected draws ε (K, B, Da)."""
        a0 = self._initial_state(obs, generator)
        shape = (self.num_steps, *a0.shape)
        return a0, torch.randn(shape, generator=generator, device=a0.device, dtype=a0.dtype)

    def _chain_math(self, obs_n: Tensor, a0: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Chain (B, K+1, Da) and exact log-likelihood (B,) from its random inputs.

        σ_φ depends on (t_k, o) only, so all K stds come from one noise-net call on K·B rows
        (:meth:`sigma_grid`); the velocity net runs once per step. Pure tensor code: the
        compiled rollout runs it through ``torch.compile``.
        """
        sampled = sample_noisy_chain(
            self.actor.velocity_fn(obs_n, self.grid),
            self._sigma_grid(obs_n),
            a0,
            self.grid,
            include_initial=False,
            noise=noise,
        )
        return sampled.chain, sampled.log_prob + self._initial_log_prob(a0)

    def sample(self, obs: Tensor, generator: torch.Generator | None = None) -> NoisyChain:
        """Sample noisy chains with their exact log-likelihoods.

        Args:
            obs: Raw observations, shape (B, Do).
            generator: RNG for a⁰ and the injected noise (a⁰ is drawn first, then the K
                steps' noise in one (K, B, Da) draw).

        Returns:
            Chains (B, K+1, Da) and log-likelihoods (B,).
        """
        obs_n = self._obs_n(obs)
        return NoisyChain(*self._chain_math(obs_n, *self._draws(obs, generator)))

    def sample_chain(
        self, obs: Tensor, deterministic: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """Chain a⁰ … a^K, shape (B, K+1, Da), in the normalized action box.

        Args:
            obs: Raw observations, shape (B, Do).
            deterministic: The noiseless ODE from a⁰ = 0 instead of a noisy chain.
            generator: RNG for the stochastic chain.

        Returns:
            The chain; ``chain[:, -1]`` is the action before mapping to env bounds.
        """
        if not deterministic:
            return self.sample(obs, generator).chain
        return self._fast("_ode_chain", self._obs_n(obs))

    def _ode_chain(self, obs_n: Tensor) -> Tensor:
        """The noiseless Euler trajectory from a⁰ = 0, shape (B, K+1, Da)."""
        velocity = self.actor.velocity_fn(obs_n, self.grid)
        shape = (obs_n.shape[0], self.actor.config.action_dim)
        a0 = torch.zeros(shape, device=obs_n.device, dtype=obs_n.dtype)
        return integrate(velocity, a0, self.grid, "euler", return_trajectory=True)

    def step_distribution(self, obs: Tensor, a_k: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Gaussian (mean, std) of transition k → k+1, each (B, Da).

        Args:
            obs: Raw observations, shape (B, Do).
            a_k: States a^k, shape (B, Da).
            k: Step index in 0 … K−1.
        """
        if not 0 <= k < self.num_steps:
            raise ValueError(f"step k must lie in [0, {self.num_steps}), got {k}")
        _, velocity, std = self._fields(obs)
        t, dt = time_grid(self.grid, device=a_k.device, dtype=a_k.dtype)
        return noisy_euler_transition(velocity, std, a_k, t[k], dt[k])

    def _check_chain(self, chain: Tensor) -> None:
        expected = (self.num_steps + 1, self.actor.config.action_dim)
        if chain.dim() != 3 or tuple(chain.shape[1:]) != expected:
            raise ValueError(
                f"chain must have shape (B, {expected[0]}, {expected[1]}), got {tuple(chain.shape)}"
            )

    def log_prob_chain(self, obs: Tensor, chain: Tensor) -> Tensor:
        """Exact log-likelihood of chains, summed over dims and steps (a⁰ term included).

        Args:
            obs: Raw observations, shape (B, Do).
            chain: Chains, shape (B, K+1, Da).

        Returns:
            Log-likelihoods, shape (B,) (float64, see ``gaussian_log_prob``).
        """
        self._check_chain(chain)
        return self._fast("_log_prob_math", self._obs_n(obs), self._cast(chain))

    def evaluate_chain(self, obs: Tensor, chain: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Everything a PPO minibatch needs, sharing one normalization and one σ pass.

        Args:
            obs: Raw observations, shape (B, Do).
            chain: Chains, shape (B, K+1, Da).

        Returns:
            ``(log_prob (B,), entropy (B,), values (B,))``: the exact chain log-likelihood
            (:meth:`log_prob_chain`), the entropy of its Gaussian transitions
            (:meth:`entropy_chain`) and V(o) (:meth:`predict_values`).
        """
        self._check_chain(chain)
        return self._fast("_evaluate_math", self._obs_n(obs), self._cast(chain))

    def _chain_scores(self, obs_n: Tensor, chain: Tensor) -> tuple[Tensor, Tensor]:
        """Log-likelihood (B,) of checked chains and the σ (K, B, Da) it used (pure).

        All K transitions of a stored chain are scored in one fused call of each network
        on K·B rows (conditioning repeated step-major, as the flow core expects).
        """
        sigma = self._sigma_grid(obs_n)
        flat_sigma = sigma.reshape(-1, sigma.shape[-1])
        velocity = self.actor.velocity_fn(obs_n.repeat(self.num_steps, 1), self.grid)
        log_prob = noisy_chain_log_prob(
            velocity,
            lambda t, x: flat_sigma,
            chain,
            include_initial=False,
            fused=True,
            steps=self.grid,
        )
        return log_prob + self._initial_log_prob(chain[:, 0]), sigma

    def _log_prob_math(self, obs_n: Tensor, chain: Tensor) -> Tensor:
        """:meth:`log_prob_chain` on checked, normalized inputs (pure tensor code)."""
        return self._chain_scores(obs_n, chain)[0]

    def _evaluate_math(self, obs_n: Tensor, chain: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`evaluate_chain` on checked, normalized inputs (pure tensor code)."""
        log_prob, sigma = self._chain_scores(obs_n, chain)
        entropy = gaussian_entropy(sigma, dim=(0, 2))
        return log_prob, entropy, self.value_net(obs_n).flatten()

    def _sigma_grid(self, obs_n: Tensor) -> Tensor:
        """σ_φ(t_k, o) at every grid time, (K, B, Da), from normalized obs in one pass."""
        t, _ = time_grid(self.grid, device=obs_n.device, dtype=obs_n.dtype)
        batch = obs_n.shape[0]
        sigma = self.sigma(t.repeat_interleave(batch), obs_n.repeat(self.num_steps, 1))
        return sigma.reshape(self.num_steps, batch, -1)

    def sigma_grid(self, obs: Tensor) -> Tensor:
        """σ_φ(t_k, o) at every grid time, shape (K, B, Da), in one noise-net pass."""
        return self._sigma_grid(self._obs_n(obs))

    def entropy_chain(self, obs: Tensor, chain: Tensor) -> Tensor:
        """Entropy of the chain's Gaussian transitions, Σ_k Σ_d ½·log(2πe·σ²), shape (B,).

        σ depends on (t_k, o) only, so the chain fixes just its length K.
        """
        self._check_chain(chain)
        return gaussian_entropy(self.sigma_grid(obs), dim=(0, 2))

    # ------------------------------------------------------------------ SB3 faces

    def forward(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, ...]:
        """Rollout step: env actions (B, Da), values (B,), log-probs (B,), chains (B, K+1, Da)."""
        obs_n = self._obs_n(obs)
        if deterministic:
            chain = self._fast("_ode_chain", obs_n)
            log_prob = torch.zeros(obs.shape[0], device=obs.device, dtype=torch.float64)
            values = self.value_net(obs_n).flatten()
            return self.to_env_action(chain[:, -1]), values, log_prob, chain
        return self._fast("_rollout_math", obs_n, *self._draws(obs, None))

    def _rollout_math(self, obs_n: Tensor, a0: Tensor, noise: Tensor) -> tuple[Tensor, ...]:
        """One rollout step from normalized obs and the chain's draws (pure tensor code)."""
        chain, log_prob = self._chain_math(obs_n, a0, noise)
        values = self.value_net(obs_n).flatten()
        return self.to_env_action(chain[:, -1]), values, log_prob, chain

    def _predict(self, observation: Tensor, deterministic: bool = False) -> Tensor:
        """Env actions (B, Da) for SB3's ``predict``."""
        chain = self.sample_chain(observation, deterministic=deterministic)
        return self.to_env_action(chain[:, -1])
