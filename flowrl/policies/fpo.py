"""FPOPolicy: a flow policy scored by its conditional flow-matching loss (FPO, FPO++).

The policy of Flow Policy Optimization (arXiv 2507.21053) and FPO++ (arXiv 2602.02481), in
the normalized action box::

    a⁰ ~ N(0, c²I),   a = φ₁(a⁰; o),

where φ₁ is the noiseless K-step Euler map of the velocity field on THE time grid (the map
BC trains) and c = ``initial_std`` (1 by default: the flow keeps the spread it learned from
data; a⁰ is the only randomness, there is no noise model). FPO needs no likelihood: a
rollout step stores N pairs (τ_i, ε_i), and the update compares the per-pair conditional
flow-matching losses (flowrl's convention, τ = 0 noise, τ = 1 data)::

    x_i = (1 − τ_i)·ε_i + τ_i·a,   ℓ_i = ‖v(τ_i, x_i, o) − (a − ε_i)‖²   (summed over Da),

before and after the update (:class:`~flowrl.algos.FPO`).

``prediction`` says how the loss reads the network's output ``v``:

* ``"velocity"`` — as the velocity, the loss above;
* ``"epsilon"`` — as the noise estimate it implies on the path, ε̂ = x_i − τ_i·v, with
  ℓ_i = ‖ε̂ − ε_i‖² = τ_i²·‖v − (a − ε_i)‖² (the FPO reference code's default output mode,
  "u_but_supervise_as_eps"). Sampling reads the same output as the velocity either way, so
  a BC velocity actor and THE Euler grid apply unchanged. (A network whose raw output is ε
  could not start the ODE: its velocity (x − ε̂)/τ is undefined at τ = 0, where THE grid
  starts.)

Two faces:

* **env face** (Stable-Baselines3): ``predict(obs, deterministic=True)`` is the ODE from
  a⁰ = 0; ``deterministic=False`` draws a⁰.
* **learner face**: ``sample``, ``draw_pairs`` (the (τ, ε) pairs of a rollout step),
  ``cfm_losses`` (the per-pair ℓ) and ``evaluate`` (ℓ and the values in one pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from gymnasium import spaces
from stable_baselines3.common.type_aliases import Schedule
from torch import Tensor, nn

from flowrl.flow.paths import linear_path_sample
from flowrl.flow.times import UniformTime
from flowrl.policies.base import FlowPolicyBase

__all__ = ["PREDICTIONS", "FPOPolicy", "FPOTerms", "Prediction"]

Prediction = Literal["velocity", "epsilon"]
PREDICTIONS: tuple[str, ...] = ("velocity", "epsilon")
_PAIR_TIMES = UniformTime()  # FPO draws τ uniformly on [0, 1]


@dataclass(frozen=True)
class FPOTerms:
    """A minibatch scored by the current parameters.

    Attributes:
        losses: Per-pair conditional flow-matching losses ℓ_i, shape (M, N), in the
            networks' dtype, with gradient.
        values: V(o), shape (M,).
        velocities: v(τ_i, x_i, o) per pair, (M, N, Da) (:meth:`FPOPolicy.pair_velocities`).
        targets: a − ε_i per pair, (M, N, Da).
    """

    losses: Tensor
    values: Tensor
    velocities: Tensor | None = None
    targets: Tensor | None = None


class FPOPolicy(FlowPolicyBase):
    """A flow ODE policy with a value function, scored by conditional flow matching.

    Args:
        observation_space: Flat Box observations (Do,).
        action_space: Box actions (Da,).
        lr_schedule: Learning-rate schedule of the actor (the velocity net).
        prediction: How the loss reads the network's output: ``"velocity"`` or
            ``"epsilon"`` (the noise estimate x_τ − τ·v; see the module docstring).
        initial_std: Standard deviation c of a⁰ ~ N(0, c²I), the policy's only randomness
            (0: one action per state, nothing to explore with).
        **kwargs: :class:`~flowrl.policies.base.FlowPolicyBase`'s arguments: ``pretrained``
            (a BC :class:`FlowActor` or its checkpoint, copied; a frozen copy is kept as
            ``reference``), ``actor_config``, ``num_steps`` (K of φ₁; default the actor's),
            ``value_hidden``, ``optimizer_class``, ``optimizer_kwargs``.

    Raises:
        ValueError: For an unknown ``prediction``, a negative ``initial_std``, K < 1, or
            spaces flow policies cannot act in; and for what
            :class:`~flowrl.policies.base.FlowPolicyBase` refuses (a non-Euler actor, a
            shortcut actor's untrained K, a pretrained actor that does not fit the env).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        *,
        prediction: Prediction = "velocity",
        initial_std: float = 1.0,
        **kwargs: Any,
    ):
        if prediction not in PREDICTIONS:
            raise ValueError(
                f"prediction must be one of {PREDICTIONS} (how the loss reads the network's "
                f"output), got {prediction!r}"
            )
        self.prediction = prediction
        super().__init__(
            observation_space, action_space, lr_schedule, initial_std=initial_std, **kwargs
        )

    def _build_noise(self, obs_dim: int, action_dim: int) -> None:
        """No noise model: a⁰ is FPO's only randomness."""

    def _actor_parameters(self) -> list[nn.Parameter]:
        return list(self.actor.parameters())

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(prediction=self.prediction)
        return data

    # ------------------------------------------------------------------ acting

    def sample(self, obs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Actions a = φ₁(a⁰; o), a⁰ ~ N(0, c²I), shape (B, Da) (normalized, unclipped).

        Args:
            obs: Raw observations, shape (B, Do).
            generator: RNG for a⁰.
        """
        return self.ode_endpoint(obs, self._initial_state(obs, generator))

    def deterministic_action(self, obs: Tensor) -> Tensor:
        """φ₁(0; o), the ODE from a⁰ = 0, shape (B, Da) (normalized)."""
        shape = (obs.shape[0], self.actor.config.action_dim)
        return self.ode_endpoint(obs, torch.zeros(shape, device=obs.device, dtype=self.dtype))

    # ------------------------------------------------------------------ scoring

    def draw_pairs(
        self, obs: Tensor, num_pairs: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """N pairs (τ_i, ε_i) per observation: τ ~ U[0, 1], ε ~ N(0, I).

        Args:
            obs: Observations, shape (B, Do) (only B, the device and dtype are read).
            num_pairs: N.
            generator: RNG for τ and ε.

        Returns:
            ``(taus (B, N), noises (B, N, Da))`` in the networks' dtype.
        """
        batch, dim = obs.shape[0], self.actor.config.action_dim
        taus = _PAIR_TIMES(
            batch * num_pairs, device=obs.device, dtype=self.dtype, generator=generator
        ).view(batch, num_pairs)
        noises = torch.randn(
            (batch, num_pairs, dim), generator=generator, device=obs.device, dtype=self.dtype
        )
        return taus, noises

    def _pair_velocities(
        self, obs_n: Tensor, actions: Tensor, taus: Tensor, noises: Tensor
    ) -> tuple[Tensor, Tensor]:
        """v(τ_i, x_i, o) and the target a − ε_i of every pair, each (B, N, Da).

        One network call on M·N rows; x_i = (1 − τ_i)·ε_i + τ_i·a (the linear path).
        """
        batch, num_pairs = taus.shape
        dim = self.actor.config.action_dim
        rows = batch * num_pairs
        cond = obs_n.repeat_interleave(num_pairs, dim=0)
        data = self._cast(actions).repeat_interleave(num_pairs, dim=0)
        t = taus.reshape(rows).to(self.dtype)
        sample = linear_path_sample(noises.reshape(rows, dim).to(self.dtype), data, t)
        velocity = self.actor.velocity_fn(cond, self.grid)(t, sample.x_t)
        shape = (batch, num_pairs, dim)
        return velocity.view(shape), sample.velocity.view(shape)

    def _losses(self, obs_n: Tensor, actions: Tensor, taus: Tensor, noises: Tensor) -> Tensor:
        """:meth:`cfm_losses` for normalized observations (one network call on M·N rows)."""
        velocity, target = self._pair_velocities(obs_n, actions, taus, noises)
        loss = (velocity - target).square().sum(dim=-1)  # ℓ is the sum over Da, ‖·‖²
        if self.prediction == "epsilon":
            # ε̂ − ε = (x_τ − τ·v) − ε = −τ·(v − (a − ε)) on the linear path.
            loss = taus.to(loss.dtype).square() * loss
        return loss

    def pair_velocities(
        self, obs: Tensor, actions: Tensor, taus: Tensor, noises: Tensor
    ) -> FPOTerms:
        """The network's velocities at every pair's path point, targets and values.

        What a forward-process learner (:class:`~flowrl.algos.NFT`) trains on.

        Args:
            obs: Raw observations, shape (M, Do).
            actions: a (normalized), shape (M, Da).
            taus: τ_i, shape (M, N).
            noises: ε_i, shape (M, N, Da).

        Returns:
            :class:`FPOTerms` with ``velocities`` and ``targets`` (M, N, Da), ``losses``
            (M, N) (ℓ_i read as ``"velocity"``) and ``values`` (M,).
        """
        obs_n = self._obs_n(obs)
        velocity, target = self._pair_velocities(obs_n, actions, taus, noises)
        return FPOTerms(
            losses=(velocity - target).square().sum(dim=-1),
            values=self.value_net(obs_n).flatten(),
            velocities=velocity,
            targets=target,
        )

    def cfm_losses(self, obs: Tensor, actions: Tensor, taus: Tensor, noises: Tensor) -> Tensor:
        """Per-pair conditional flow-matching losses ℓ_i, shape (B, N).

        Args:
            obs: Raw observations, shape (B, Do).
            actions: a (normalized, as the policy produced them), shape (B, Da).
            taus: τ_i, shape (B, N).
            noises: ε_i, shape (B, N, Da).

        Returns:
            ℓ_i summed over the action dims (read per ``prediction``), in the networks'
            dtype, with gradient.
        """
        obs_n = self._obs_n(obs)
        return self._losses(obs_n, actions, taus, noises)

    def evaluate(self, obs: Tensor, actions: Tensor, taus: Tensor, noises: Tensor) -> FPOTerms:
        """Per-pair losses (M, N) and values (M,) of a minibatch, from one normalization.

        Args:
            obs: Raw observations, shape (M, Do).
            actions: a, shape (M, Da).
            taus: τ_i, shape (M, N).
            noises: ε_i, shape (M, N, Da).
        """
        obs_n = self._obs_n(obs)
        return FPOTerms(
            losses=self._losses(obs_n, actions, taus, noises),
            values=self.value_net(obs_n).flatten(),
        )

    # ------------------------------------------------------------------ SB3 faces

    def forward(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, ...]:
        """Env actions (B, Da), values (B,) and log-probs (B,) (0: FPO has no likelihood)."""
        actions = self.deterministic_action(obs) if deterministic else self.sample(obs)
        log_prob = torch.zeros(obs.shape[0], device=obs.device, dtype=torch.float64)
        values = self.predict_values(obs).flatten()
        return self.to_env_action(actions), values, log_prob

    def _predict(self, observation: Tensor, deterministic: bool = False) -> Tensor:
        """Env actions (B, Da) for SB3's ``predict``."""
        if deterministic:
            return self.to_env_action(self.deterministic_action(observation))
        return self.to_env_action(self.sample(observation))
