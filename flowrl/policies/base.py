"""What every SB3 flow policy of an on-policy learner shares.

:class:`FlowPolicyBase` holds a :class:`~flowrl.policies.FlowActor` (fresh, or a copy of a
BC checkpoint), a frozen copy of the starting actor (the reference that W2/BC regularizers
and comparisons use), the K of THE time grid, the chain start a⁰ ~ N(0, c²I), a value
network, and two optimizers (actor side and critic). Subclasses add their noise model:

* :class:`~flowrl.policies.FlowPolicy` (ReinFlow) — learned noise on every Euler step;
* :class:`~flowrl.policies.PolicyFlowPolicy` (PolicyFlow) — Gaussian noise on the endpoint.

Both act in the normalized action box [−1, 1]^Da and map to the env's bounds at the edge.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import Schedule
from torch import Tensor, nn

from flowrl.data.normalizers import Normalizer
from flowrl.flow.integrators import gaussian_log_prob, integrate
from flowrl.flow.times import time_grid
from flowrl.nets.mlp import MLP
from flowrl.policies.flow_actor import FlowActor, FlowActorConfig

__all__ = ["FlowPolicyBase", "check_spaces"]


def check_spaces(observation_space: spaces.Space, action_space: spaces.Space) -> tuple[int, int]:
    """Check that flow policies can act in these spaces; return (Do, Da).

    Raises:
        ValueError: For non-Box action spaces (discrete, multi-discrete, dict) and for
            observations that are not flat vectors (images need an encoder first).
    """
    if not isinstance(action_space, spaces.Box) or len(action_space.shape) != 1:
        raise ValueError(
            f"flowrl's flow policies need a continuous 1-D Box action space, got {action_space}. "
            "For discrete actions use a categorical policy (e.g. SB3's PPO)."
        )
    if not isinstance(observation_space, spaces.Box):
        raise ValueError(
            f"flow policies need a flat Box observation space, got {observation_space}: flatten "
            "dict observations first (gymnasium.wrappers.FlattenObservation)."
        )
    if len(observation_space.shape) != 1:
        raise ValueError(
            f"flow policies take flat vector observations, got shape {observation_space.shape}: "
            "image observations need an encoder (a CNN features extractor) that flowrl's "
            "flow policies do not include yet; encode or flatten the observations first."
        )
    return int(observation_space.shape[0]), int(action_space.shape[0])


def check_sigma_bounds(sigma_min: float, sigma_max: float) -> None:
    """Raise unless 0 < sigma_min <= sigma_max (both finite numbers)."""
    if not (0 < sigma_min <= sigma_max < float("inf")):
        raise ValueError(
            f"need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )


def _default_optimizer_kwargs(
    optimizer_class: type[torch.optim.Optimizer], kwargs: dict[str, Any] | None
) -> dict[str, Any]:
    """The optimizer arguments, with Adam/AdamW fused unless the caller chose otherwise."""
    kwargs = dict(kwargs or {})
    if optimizer_class in (torch.optim.Adam, torch.optim.AdamW) and not (
        {"fused", "foreach"} & kwargs.keys()
    ):
        kwargs["fused"] = True
    return kwargs


class FlowPolicyBase(BasePolicy):
    """A flow actor, its frozen reference copy, a value network and their optimizers.

    Args:
        observation_space: Flat Box observations (Do,).
        action_space: Box actions (Da,).
        lr_schedule: Learning-rate schedule of the actor side.
        actor_config: :class:`FlowActorConfig` fields for a fresh actor (ignored when
            ``pretrained`` is given; dims come from the spaces).
        pretrained: A BC-pretrained :class:`FlowActor` or the path of its checkpoint. The
            policy starts from a copy and keeps a frozen copy as ``reference``; both travel
            in every SB3 checkpoint.
        num_steps: K, Euler steps on THE time grid (default: the actor's).
        initial_std: Standard deviation c of the chain start a⁰ ~ N(0, c²I) in stochastic
            rollouts (0: every chain starts at a⁰ = 0, the deterministic ODE's start).
        value_hidden: Hidden widths of the value network.
        optimizer_class: Optimizer of both sides.
        optimizer_kwargs: Extra optimizer arguments. For Adam and AdamW the default adds
            ``fused=True`` (unless ``fused`` or ``foreach`` is given): one kernel updates all
            parameter tensors, where PyTorch's CPU default loops over them in Python (a
            velocity net's Adam step: 0.46 ms fused vs 1.72 ms, width 64, measured); the
            arithmetic is Adam's either way.

    Subclasses build their noise model in :meth:`_build_noise` (called after the actor and
    before the value network) and list the actor side's parameters in
    :meth:`_actor_parameters`.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        actor_config: dict[str, Any] | None = None,
        pretrained: FlowActor | str | os.PathLike | None = None,
        num_steps: int | None = None,
        initial_std: float = 0.0,
        value_hidden: tuple[int, ...] = (256, 256),
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__(
            observation_space,
            action_space,
            optimizer_class=optimizer_class,
            optimizer_kwargs=_default_optimizer_kwargs(optimizer_class, optimizer_kwargs),
        )
        obs_dim, action_dim = check_spaces(observation_space, action_space)
        if not initial_std >= 0:
            raise ValueError(f"initial_std must be >= 0, got {initial_std}")
        self.initial_std = float(initial_std)
        self.actor = self._make_actor(obs_dim, action_dim, actor_config, pretrained, action_space)
        # Frozen copy of the starting flow: the anchor of the W2 regularizer.
        self.reference = copy.deepcopy(self.actor).requires_grad_(False).eval()
        self.num_steps = num_steps if num_steps is not None else self.actor.config.num_steps
        time_grid(self.num_steps)  # validates K early
        self._build_noise(obs_dim, action_dim)
        self.value_net = MLP(obs_dim, 1, value_hidden, act="tanh")
        self.value_hidden = tuple(value_hidden)
        self.optimizer = self.optimizer_class(
            self._actor_parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )
        # The learner sets the critic's learning rate (it may differ from the actor's).
        self.critic_optimizer = self.optimizer_class(
            self.value_net.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _build_noise(self, obs_dim: int, action_dim: int) -> None:
        """Create the noise model's modules (subclasses)."""
        raise NotImplementedError

    def _actor_parameters(self) -> list[nn.Parameter]:
        """Parameters the actor optimizer steps, in a fixed order (subclasses)."""
        raise NotImplementedError

    @staticmethod
    def _make_actor(
        obs_dim: int,
        action_dim: int,
        actor_config: dict[str, Any] | None,
        pretrained: FlowActor | str | os.PathLike | None,
        action_space: spaces.Box,
    ) -> FlowActor:
        """A copy of the pretrained actor (dims checked) or a fresh one for these spaces."""
        if pretrained is not None:
            actor = pretrained if isinstance(pretrained, FlowActor) else FlowActor.load(pretrained)
            if (actor.config.obs_dim, actor.config.action_dim) != (obs_dim, action_dim):
                raise ValueError(
                    f"the pretrained actor has (Do, Da) = ({actor.config.obs_dim}, "
                    f"{actor.config.action_dim}) but the env has ({obs_dim}, {action_dim}): "
                    "was it trained on another task?"
                )
            # A BC trainer's EMA actor is frozen (requires_grad=False): the copy must train.
            return copy.deepcopy(actor).cpu().requires_grad_(True).train()
        fields = dict(actor_config or {})
        fields.update(obs_dim=obs_dim, action_dim=action_dim)
        return FlowActor(
            FlowActorConfig(**fields),
            Normalizer.identity(obs_dim),
            Normalizer.box(action_space.low, action_space.high),
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained: FlowActor | str | os.PathLike,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        learning_rate: float = 3e-4,
        **kwargs: Any,
    ) -> FlowPolicyBase:
        """Build a policy from a BC checkpoint (or actor) in one call.

        Args:
            pretrained: :class:`FlowActor` or the path of its checkpoint.
            observation_space: The env's observation space.
            action_space: The env's action space.
            learning_rate: Constant actor learning rate.
            **kwargs: Other constructor arguments (``num_steps``, noise bounds, …).

        Returns:
            The policy.
        """
        return cls(
            observation_space,
            action_space,
            lambda _: learning_rate,
            pretrained=pretrained,
            **kwargs,
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        # Everything needed to rebuild the modules; the weights (the pretrained actor, the
        # reference and the normalizers included) come from the state dict.
        data = super()._get_constructor_parameters()
        data.pop("normalize_images", None)  # flat vector observations only
        config = asdict(self.actor.config)
        config.pop("obs_dim")
        config.pop("action_dim")
        data.update(
            lr_schedule=self._dummy_schedule,
            actor_config=config,
            num_steps=self.num_steps,
            initial_std=self.initial_std,
            value_hidden=self.value_hidden,
            optimizer_class=self.optimizer_class,
            optimizer_kwargs=self.optimizer_kwargs,
        )
        return data

    # ------------------------------------------------------------------ shared pieces

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the networks (float32 unless the policy was cast)."""
        return self.actor.velocity_net.output.weight.dtype

    def _cast(self, obs: Tensor) -> Tensor:
        """Observations in the networks' dtype (SB3 hands over float32 or float64 arrays)."""
        return obs.to(self.dtype)

    def _noise(self, obs: Tensor, generator: torch.Generator | None) -> Tensor:
        """A standard normal draw of shape (B, Da), in the networks' dtype."""
        shape = (obs.shape[0], self.actor.config.action_dim)
        return torch.randn(shape, generator=generator, device=obs.device, dtype=self.dtype)

    def _initial_state(self, obs: Tensor, generator: torch.Generator | None) -> Tensor:
        """Chain start a⁰ ~ N(0, c²I), c = ``initial_std``, shape (B, Da)."""
        return self.initial_std * self._noise(obs, generator)

    def _initial_log_prob(self, a0: Tensor) -> Tensor:
        """Log-density of a⁰ under N(0, c²I), shape (B,) float64; 0 for the fixed start c = 0."""
        if self.initial_std == 0:
            return torch.zeros(a0.shape[0], device=a0.device, dtype=torch.float64)
        return gaussian_log_prob(a0, torch.zeros_like(a0), torch.full_like(a0, self.initial_std))

    def predict_values(self, obs: Tensor) -> Tensor:
        """State values V(o), shape (B, 1) (SB3's convention)."""
        return self.value_net(self.actor.normalize_obs(self._cast(obs)))

    def ode_endpoint(self, obs: Tensor, a0: Tensor) -> Tensor:
        """The noiseless K-step Euler map φ₁(a⁰; o) on THE grid, shape (B, Da).

        Args:
            obs: Raw observations, shape (B, Do).
            a0: Chain starts, shape (B, Da).
        """
        return self._endpoint(self.actor.normalize_obs(self._cast(obs)), a0)

    def _endpoint(self, obs_n: Tensor, a0: Tensor) -> Tensor:
        """:meth:`ode_endpoint` for already normalized observations (B, Do)."""
        return integrate(self.actor.velocity_fn(obs_n, self.num_steps), a0, self.num_steps)

    def bc_regularizer(self, obs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Squared W2 proxy to the frozen pretrained flow, shape (B,).

        Both flows integrate the same a⁰ ~ N(0, I) deterministically over K steps; the
        squared distance of their endpoints (summed over dims) upper-bounds W2² of the two
        action distributions, since the shared a⁰ is one coupling.
        """
        obs_n = self.actor.normalize_obs(self._cast(obs))
        a0 = self._noise(obs, generator)
        ours = self._endpoint(obs_n, a0)
        with torch.no_grad():
            ref_obs_n = self.reference.normalize_obs(self._cast(obs))
            ref = integrate(
                self.reference.velocity_fn(ref_obs_n, self.num_steps), a0, self.num_steps
            )
        return (ours - ref).square().sum(dim=-1)

    def to_env_action(self, a_k: Tensor) -> Tensor:
        """Map normalized final states a^K (B, Da) to env actions, clipped into the box."""
        return self.actor.action_normalizer.unnormalize(a_k, clip=True)

    def set_training_mode(self, mode: bool) -> None:
        """Train/eval mode for the trained parts; the reference flow always stays in eval."""
        super().set_training_mode(mode)
        self.reference.eval()
