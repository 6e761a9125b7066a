"""EDPPolicy: a flow policy fine-tuned toward π_pre·exp(Q/β), with IQL critics.

The actor is a flow v_θ(t, a, o) sampled as flow matching trained it: the ODE on THE K-step
grid from a⁰ ~ N(0, c²I) (c = ``initial_std``, default 1: the pretrained flow's own action
distribution), ``predict(deterministic=True)`` from a⁰ = 0 (the a⁰ convention of every
flowrl policy). Chain ends are clipped into the normalized box [−1, 1]^Da, which is also what
SB3's replay buffer stores (``scale_action`` of the env action).

:attr:`reference` is the frozen pretrained flow π_pre (every flow policy keeps one); it
proposes the candidate actions of the distillation step. The critics are IQL's
(Kostrikov et al. 2021, arXiv 2110.06169): twin Q_i(o, y) with Polyak targets, and a state
value V(o) fitted by expectile regression.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from gymnasium import spaces
from stable_baselines3.common.type_aliases import Schedule
from torch import Tensor, nn

from flowrl.flow.integrators import integrate
from flowrl.policies.base import FlowPolicyBase
from flowrl.policies.flow_sac import QCritics

__all__ = ["EDPPolicy"]


class EDPPolicy(QCritics, FlowPolicyBase):
    """Flow actor (ODE sampling from a random start) with IQL's Q- and V-critics.

    Args:
        observation_space: Flat Box observations (Do,).
        action_space: Box actions (Da,).
        lr_schedule: Learning-rate schedule (actor and critics).
        initial_std: c of the chain start a⁰ ~ N(0, c²I) when acting stochastically (default
            1: samples of the flow as trained).
        n_critics: Number of Q-networks (2: the minimum is used).
        critic_layer_norm: LayerNorm after every hidden layer of the critics.
        value_act: Activation of the critics (default ReLU).
        net_arch: SB3's ``net_arch``: ``pi`` the velocity net, ``qf``/``vf`` the critics.
        **kwargs: :class:`~flowrl.policies.base.FlowPolicyBase`'s arguments (``pretrained``,
            ``actor_config``, ``num_steps``, ``value_hidden``, ``optimizer_class``,
            ``optimizer_kwargs``, ``activation_fn``).

    Raises:
        ValueError: For ``n_critics < 1`` and everything the base refuses.
    """

    off_policy: ClassVar[bool] = True

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        *,
        initial_std: float = 1.0,
        n_critics: int = 2,
        critic_layer_norm: bool = False,
        value_act: str = "relu",
        net_arch: list[int] | dict[str, list[int]] | None = None,
        **kwargs: Any,
    ):
        net_arch = self._q_options(n_critics, critic_layer_norm, net_arch)
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            initial_std=initial_std,
            value_act=value_act,
            net_arch=net_arch,
            **kwargs,
        )

    # ------------------------------------------------------------------ modules

    def _build_noise(self, obs_dim: int, action_dim: int) -> None:
        """No noise model: the only randomness is the chain start a⁰."""

    def _actor_parameters(self) -> list[nn.Parameter]:
        return list(self.actor.parameters())

    def _build_critic(self, obs_dim: int, action_dim: int) -> None:
        self._build_q_critics(obs_dim, action_dim)
        self.value_net = self._q_net(obs_dim)

    def _critic_parameters(self) -> list[nn.Parameter]:
        return list(self.critic.parameters()) + list(self.value_net.parameters())

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(n_critics=self.n_critics, critic_layer_norm=self.critic_layer_norm)
        return data

    # ------------------------------------------------------------------ critics

    def state_values(self, obs: Tensor) -> Tensor:
        """V(o), shape (B,)."""
        return self.value_net(self._obs_n(obs)).squeeze(-1)

    def predict_values(self, obs: Tensor) -> Tensor:
        """V(o), shape (B, 1) (SB3's convention)."""
        return self.state_values(obs).unsqueeze(-1)

    # ------------------------------------------------------------------ sampling

    def sample_normalized(
        self,
        obs: Tensor,
        deterministic: bool = False,
        *,
        reference: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Chain ends a^K in normalized action units, shape (B, Da) (not clipped).

        Args:
            obs: Raw observations, shape (B, Do).
            deterministic: Start from a⁰ = 0 instead of a⁰ ~ N(0, c²I).
            reference: Sample the frozen pretrained flow π_pre instead of the actor.
            generator: RNG of a⁰.
        """
        actor = self.reference if reference else self.actor
        obs = self._cast(obs)
        a0 = self._initial_state(obs, generator)
        if deterministic:
            a0 = torch.zeros_like(a0)
        obs_n = actor.normalize_obs(obs)
        return integrate(actor.velocity_fn(obs_n, self.grid), a0, self.grid)

    def to_env_action(self, a_k: Tensor) -> Tensor:
        """Chain ends a^K (B, Da) → env actions (clipped into the box)."""
        return self.actor.action_normalizer.unnormalize(a_k.clamp(-1.0, 1.0), clip=True)

    def forward(self, obs: Tensor, deterministic: bool = False) -> Tensor:  # type: ignore[override]
        """Env actions (B, Da)."""
        return self._predict(obs, deterministic=deterministic)

    def _predict(self, observation: Tensor, deterministic: bool = False) -> Tensor:
        return self.to_env_action(self.sample_normalized(observation, deterministic))

    def set_training_mode(self, mode: bool) -> None:
        """Train/eval mode for the trained parts; reference flow and target critics stay eval."""
        super().set_training_mode(mode)
        self.critic_target.eval()
