"""FlowSACPolicy: ReinFlow's noisy flow chain as a SAC actor, with twin Q-critics.

The actor is :class:`~flowrl.policies.FlowPolicy`'s chain on THE K-step grid, in the
normalized action box::

    a⁰ ~ N(0, c²I),   a^{k+1} = a^k + v_θ(t_k, a^k, o)·Δt_k + σ_φ(t_k, o)·ε_k,

sampled by reparameterization (ε_k is the only randomness, so gradients reach θ and φ
through all K steps), with the exact chain log-likelihood of
:func:`~flowrl.flow.integrators.noisy_chain_log_prob`'s sampler (the function ReinFlow
uses). The chain's end a^K is mapped into the box [−1, 1]^Da by ``squash``:

* ``"tanh"``: y = tanh(a^K), with the change-of-variables correction
  log p(y) = log p(chain) − Σ_d log(1 − tanh²(a^K_d)) (SAC's squashed Gaussian, and SAC
  Flow's, arXiv 2509.25756). The affine map from [−1, 1] to the env's bounds adds a constant,
  which is omitted (as SB3's SAC omits it).
* ``"clip"``: y = clip(a^K, −1, 1), no correction: the entropy term is that of the unclipped
  chain, the convention of ReinFlow and of PPO's unclipped Gaussian. A BC flow learned
  actions inside the box, so a^K already lies there and its deterministic action is kept; a
  tanh would shrink it (0.9 ↦ 0.72).

``"auto"`` picks ``"clip"`` for a pretrained actor and ``"tanh"`` for a fresh one, and is
stored resolved, so a loaded policy squashes as it was trained.

The critics Q_i(o, y), i = 1 … n_critics, read the actor's normalized observations and the
squashed action y ∈ [−1, 1]^Da (what SB3's replay buffer stores for Box actions:
``policy.scale_action`` of the env action); their Polyak-averaged copies are the targets.
"""

from __future__ import annotations

import copy
import math
from typing import Any, ClassVar, Literal

import torch
from gymnasium import spaces
from stable_baselines3.common.type_aliases import Schedule
from torch import Tensor, nn
from torch.nn import functional as F

from flowrl.nets.mlp import MLP
from flowrl.policies.flow_policy import FlowPolicy

__all__ = ["SQUASHES", "FlowSACPolicy", "QCritics", "tanh_log_det"]

Squash = Literal["auto", "tanh", "clip"]
SQUASHES = ("auto", "tanh", "clip")


def tanh_log_det(x: Tensor) -> Tensor:
    """Σ_d log(1 − tanh²(x_d)), shape (B,), computed stably as 2·(log 2 − x − softplus(−2x)).

    The log-determinant of the Jacobian of y = tanh(x) (elementwise), summed over the last
    dimension, in float64 like the chain's log-likelihood.
    """
    x = x.to(torch.promote_types(x.dtype, torch.float64))
    return (2.0 * (math.log(2.0) - x - F.softplus(-2.0 * x))).sum(dim=-1)


class QCritics:
    """Action-value critics Q_i(o, y) and their Polyak targets, for replay-buffer flow policies.

    A mixin of :class:`~flowrl.policies.base.FlowPolicyBase` subclasses (FlowSAC's and EDP's
    policies): :meth:`_q_options` checks the options before the base constructor runs,
    :meth:`_build_q_critics` builds the critics from it.
    """

    n_critics: int
    critic_layer_norm: bool
    value_hidden: tuple[int, ...]
    value_act: str
    actor: Any
    critic: nn.ModuleList
    critic_target: nn.ModuleList

    def _q_options(
        self,
        n_critics: int,
        critic_layer_norm: bool,
        net_arch: list[int] | dict[str, list[int]] | None,
    ) -> list[int] | dict[str, list[int]] | None:
        """Store the critic options; SB3's ``net_arch`` with ``qf`` (SAC's name) read as ``vf``.

        Raises:
            ValueError: For ``n_critics`` < 1.
        """
        if isinstance(n_critics, bool) or not isinstance(n_critics, int) or n_critics < 1:
            raise ValueError(f"n_critics must be a positive integer, got {n_critics!r}")
        self.n_critics = n_critics
        self.critic_layer_norm = bool(critic_layer_norm)
        if isinstance(net_arch, dict) and "qf" in net_arch:  # SB3's SAC names the critic qf
            net_arch = {("vf" if k == "qf" else k): v for k, v in net_arch.items()}
        return net_arch

    def _q_net(self, in_dim: int) -> MLP:
        return MLP(
            in_dim, 1, self.value_hidden, act=self.value_act, layer_norm=self.critic_layer_norm
        )

    def _build_q_critics(self, obs_dim: int, action_dim: int) -> None:
        self.critic = nn.ModuleList(
            self._q_net(obs_dim + action_dim) for _ in range(self.n_critics)
        )
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)

    def q_values(self, obs: Tensor, actions: Tensor, target: bool = False) -> Tensor:
        """Q_i(o, y) of every critic, shape (n_critics, B).

        Args:
            obs: Raw observations, shape (B, Do) (normalized by the actor's normalizer).
            actions: Squashed actions y ∈ [−1, 1]^Da, shape (B, Da) (the replay buffer's).
            target: Use the target critics.
        """
        obs_n = self._obs_n(obs)  # type: ignore[attr-defined]
        inputs = torch.cat([obs_n, actions.to(obs_n.dtype)], dim=-1)
        nets = self.critic_target if target else self.critic
        return torch.stack([net(inputs).squeeze(-1) for net in nets])


class FlowSACPolicy(QCritics, FlowPolicy):
    """Noise-injected flow actor for SAC, with twin Q-critics and their targets.

    Args:
        observation_space: Flat Box observations (Do,).
        action_space: Box actions (Da,).
        lr_schedule: Learning-rate schedule (actor, critics).
        squash: ``"tanh"``, ``"clip"`` or ``"auto"`` (see the module docstring).
        n_critics: Number of Q-networks (2: clipped double Q).
        critic_layer_norm: LayerNorm after every hidden layer of the critics.
        value_act: Activation of the Q-networks (default ReLU, as SB3's SAC).
        net_arch: SB3's ``net_arch``: ``pi`` the velocity net, ``qf`` (or ``vf``) the critics.
        **kwargs: :class:`~flowrl.policies.FlowPolicy`'s arguments (``value_hidden``: the
            hidden widths of each Q-network, default 256, 256 as SB3's SAC; ``pretrained``,
            ``actor_config``, ``num_steps``, ``initial_std``, ``sigma_min``,
            ``sigma_max``, ``noise_hidden``, ``optimizer_class``, ``optimizer_kwargs``,
            ``activation_fn``).

    Raises:
        ValueError: For an unknown ``squash``, ``n_critics < 1``, and everything
            :class:`~flowrl.policies.FlowPolicyBase` refuses.
    """

    # Its chains are scored with gradients through the reparameterized sample (eager); the
    # compiled paths that need no state-value net: scoring and the deterministic action.
    compiled_methods = ("_log_prob_math", "_ode_chain")

    off_policy: ClassVar[bool] = True

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        *,
        squash: Squash = "auto",
        n_critics: int = 2,
        critic_layer_norm: bool = False,
        value_act: str = "relu",
        net_arch: list[int] | dict[str, list[int]] | None = None,
        **kwargs: Any,
    ):
        if squash not in SQUASHES:
            raise ValueError(f"squash must be one of {SQUASHES}, got {squash!r}")
        if squash == "auto":
            squash = "clip" if kwargs.get("pretrained") is not None else "tanh"
        self.squash: str = squash
        net_arch = self._q_options(n_critics, critic_layer_norm, net_arch)
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            value_act=value_act,
            net_arch=net_arch,
            **kwargs,
        )

    # ------------------------------------------------------------------ critics

    def _build_critic(self, obs_dim: int, action_dim: int) -> None:
        self._build_q_critics(obs_dim, action_dim)

    def _critic_parameters(self) -> list[nn.Parameter]:
        return list(self.critic.parameters())

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            squash=self.squash, n_critics=self.n_critics, critic_layer_norm=self.critic_layer_norm
        )
        return data

    def predict_values(self, obs: Tensor) -> Tensor:
        """Not defined: SAC learns action values; use :meth:`q_values`."""
        raise TypeError(
            "FlowSACPolicy has Q-critics, not a state-value function: use q_values(obs, actions)"
        )

    def evaluate_chain(self, obs: Tensor, chain: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Not defined (it returns state values): use :meth:`log_prob_chain`."""
        raise TypeError(
            "FlowSACPolicy has no state-value function; score chains with log_prob_chain"
        )

    # ------------------------------------------------------------------ squashing

    def squash_action(self, a_k: Tensor) -> tuple[Tensor, Tensor]:
        """Map chain ends a^K (B, Da) into the box: ``(y (B, Da), log|det ∂y/∂a^K| (B,))``.

        ``"tanh"``: y = tanh(a^K) and Σ_d log(1 − y_d²); ``"clip"``: y = clip(a^K, −1, 1)
        and 0 (no change-of-variables term; see the module docstring).
        """
        if self.squash == "tanh":
            return torch.tanh(a_k), tanh_log_det(a_k)
        zeros = torch.zeros(a_k.shape[0], device=a_k.device, dtype=torch.float64)
        return a_k.clamp(-1.0, 1.0), zeros

    def action_log_prob(
        self, obs: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Reparameterized squashed actions and their log-likelihoods (SAC's actor pass).

        Args:
            obs: Raw observations, shape (B, Do).
            generator: RNG of a⁰ and the injected noise.

        Returns:
            ``(y (B, Da), log p (B,) float64)``: y ∈ [−1, 1]^Da, differentiable in the actor's
            parameters through all K steps; log p = the exact chain log-likelihood (a⁰'s term
            included for c > 0) − the squash's log-determinant.
        """
        sampled = self.sample(obs, generator)
        actions, log_det = self.squash_action(sampled.chain[:, -1])
        return actions, sampled.log_prob - log_det

    def to_env_action(self, a_k: Tensor) -> Tensor:
        """Chain ends a^K (B, Da) → env actions: squashed, then mapped to the env's bounds."""
        return self.actor.action_normalizer.unnormalize(self.squash_action(a_k)[0], clip=True)

    def forward(self, obs: Tensor, deterministic: bool = False) -> Tensor:  # type: ignore[override]
        """Env actions (B, Da) (SB3's SAC policies return actions from ``forward``)."""
        return self._predict(obs, deterministic=deterministic)

    def set_training_mode(self, mode: bool) -> None:
        """Train/eval mode for the trained parts; reference flow and target critics stay eval."""
        super().set_training_mode(mode)
        self.critic_target.eval()
