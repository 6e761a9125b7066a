"""FlowPolicy: an SB3 policy whose actions come from a noise-injected flow (ReinFlow).

Two faces:

* **env face** (Stable-Baselines3): ``predict(obs, state, episode_start, deterministic)``.
  ``deterministic=True`` integrates the noiseless ODE from a⁰ = 0 (the prior's mode), so it
  is a deterministic function of the observation; otherwise a noisy chain is sampled.
* **learner face**: ``sample_chain``, ``step_distribution``, ``log_prob_chain``,
  ``entropy_chain``, ``bc_regularizer``, ``predict_values``.

The chain (ReinFlow, arXiv 2505.22094) on THE K-step grid (t_k, Δt_k), in the normalized
action box::

    a⁰ ~ N(0, I),   a^{k+1} = a^k + v_θ(t_k, a^k, o)·Δt_k + σ_φ(t_k, o)·ε_k,

with σ_φ a small MLP squashed into [σ_min, σ_max]. Each transition is Gaussian, so
``log_prob_chain`` is exact. The env receives a^K mapped to its bounds (and clipped); the
chain itself is stored unclipped, as PPO stores unclipped Gaussian actions.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import Schedule
from torch import Tensor

from flowrl.data.normalizers import Normalizer
from flowrl.flow.integrators import (
    NoisyChain,
    gaussian_log_prob,
    integrate,
    noisy_chain_log_prob,
    noisy_euler_transition,
    sample_noisy_chain,
)
from flowrl.flow.times import time_grid
from flowrl.nets.embeddings import SinusoidalEmbedding
from flowrl.nets.mlp import MLP
from flowrl.policies.flow_actor import FlowActor, FlowActorConfig

__all__ = ["FlowPolicy", "check_spaces"]


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
            f"FlowPolicy needs a flat Box observation space, got {observation_space}: flatten "
            "dict observations first (gymnasium.wrappers.FlattenObservation)."
        )
    if len(observation_space.shape) != 1:
        raise ValueError(
            f"FlowPolicy takes flat vector observations, got shape {observation_space.shape}: "
            "image observations need an encoder (a CNN features extractor) that flowrl's "
            "flow policies do not include yet; encode or flatten the observations first."
        )
    return int(observation_space.shape[0]), int(action_space.shape[0])


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


class FlowPolicy(BasePolicy):
    """Noise-injected flow policy with a learned noise scale and a value function.

    Args:
        observation_space: Flat Box observations (Do,).
        action_space: Box actions (Da,).
        lr_schedule: Learning-rate schedule of the actor (velocity + noise networks).
        actor_config: :class:`FlowActorConfig` fields for a fresh actor (ignored when
            ``pretrained`` is given; dims come from the spaces).
        pretrained: A BC-pretrained :class:`FlowActor` or the path of its checkpoint. The
            policy starts from a copy, and keeps a frozen copy as the reference for the
            W2 regularizer; both travel in every SB3 checkpoint.
        num_steps: K, denoising steps of the chain (default: the actor's).
        sigma_min: Lower bound of σ_φ (normalized action units).
        sigma_max: Upper bound of σ_φ at the start of training (a schedule may lower it).
        initial_std: Standard deviation c of the chain's start a⁰ ~ N(0, c²I) in stochastic
            rollouts. The default 0 starts every chain at a⁰ = 0, the start of the
            deterministic ODE that ``predict(deterministic=True)`` integrates, so PPO
            improves the very path that is evaluated and exploration comes from σ_φ alone.
            With c = 1 (a⁰ drawn as in BC training) PPO improved the stochastic policy on
            Hopper-v5 while the deterministic return fell below the BC start (1178 → 825
            and 1049 in 300k steps, 2 seeds), because the spread a BC flow inherits from a⁰
            dwarfs σ_φ and the likelihood conditions on a⁰; with c = 0 the same runs went
            to 1591, 3233 and 3113 (3 seeds). The a⁰ term of the likelihood uses c
            (omitted for c = 0); it does not depend on the parameters.
        noise_hidden: Hidden widths of the noise network.
        value_hidden: Hidden widths of the value network.
        optimizer_class: Optimizer for both networks.
        optimizer_kwargs: Extra optimizer arguments. For Adam and AdamW the default adds
            ``fused=True`` (unless ``fused`` or ``foreach`` is given): one kernel updates all
            parameter tensors, where PyTorch's CPU default loops over them in Python (a
            velocity net's Adam step: 0.46 ms fused vs 1.72 ms, width 64, measured); the
            arithmetic is Adam's either way.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        actor_config: dict[str, Any] | None = None,
        pretrained: FlowActor | str | os.PathLike | None = None,
        num_steps: int | None = None,
        sigma_min: float = 0.10,
        sigma_max: float = 0.24,
        initial_std: float = 0.0,
        noise_hidden: tuple[int, ...] = (64, 64),
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
        if not 0 < sigma_min <= sigma_max:
            raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
        if not initial_std >= 0:
            raise ValueError(f"initial_std must be >= 0, got {initial_std}")
        self.initial_std = float(initial_std)
        self.actor = self._make_actor(obs_dim, action_dim, actor_config, pretrained, action_space)
        # Frozen copy of the starting flow: the anchor of the W2 regularizer.
        self.reference = copy.deepcopy(self.actor).requires_grad_(False).eval()
        self.num_steps = num_steps if num_steps is not None else self.actor.config.num_steps
        time_grid(self.num_steps)  # validates K early
        self.sigma_min = sigma_min
        self.register_buffer("sigma_max", torch.tensor(float(sigma_max)))
        self._sigma_max_init = float(sigma_max)
        self.noise_time_embedding = SinusoidalEmbedding(16)
        self.noise_net = MLP(obs_dim + 16, action_dim, noise_hidden, act="tanh", zero_last=True)
        self.value_net = MLP(obs_dim, 1, value_hidden, act="tanh")
        self.noise_hidden, self.value_hidden = tuple(noise_hidden), tuple(value_hidden)
        actor_params = list(self.actor.parameters()) + list(self.noise_net.parameters())
        actor_params += list(self.noise_time_embedding.parameters())
        self.optimizer = self.optimizer_class(
            actor_params, lr=lr_schedule(1), **self.optimizer_kwargs
        )
        # The learner sets the critic's learning rate (it may differ from the actor's).
        self.critic_optimizer = self.optimizer_class(
            self.value_net.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

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
    ) -> FlowPolicy:
        """Build a policy from a BC checkpoint (or actor) in one call.

        Args:
            pretrained: :class:`FlowActor` or the path of its checkpoint.
            observation_space: The env's observation space.
            action_space: The env's action space.
            learning_rate: Constant actor learning rate.
            **kwargs: Other constructor arguments (``num_steps``, ``sigma_max``, …).

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
            sigma_min=self.sigma_min,
            sigma_max=self._sigma_max_init,
            initial_std=self.initial_std,
            noise_hidden=self.noise_hidden,
            value_hidden=self.value_hidden,
            optimizer_class=self.optimizer_class,
            optimizer_kwargs=self.optimizer_kwargs,
        )
        return data

    # ------------------------------------------------------------------ noise and value

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the networks (float32 unless the policy was cast)."""
        return self.actor.velocity_net.output.weight.dtype

    def _cast(self, obs: Tensor) -> Tensor:
        """Observations in the networks' dtype (SB3 hands over float32 or float64 arrays)."""
        return obs.to(self.dtype)

    def _noise(self, obs: Tensor, generator: torch.Generator | None) -> Tensor:
        """a⁰ ~ N(0, I), shape (B, Da), in the networks' dtype."""
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

    def sigma(self, t: Tensor, obs_n: Tensor) -> Tensor:
        """σ_φ(t, o) ∈ [σ_min, σ_max], shape (B, Da), from times (B,) and normalized obs."""
        raw = self.noise_net(torch.cat([obs_n, self.noise_time_embedding(t)], dim=-1))
        return self.sigma_min + (self.sigma_max - self.sigma_min) * torch.sigmoid(raw)

    def predict_values(self, obs: Tensor) -> Tensor:
        """State values V(o), shape (B, 1) (SB3's convention)."""
        return self.value_net(self.actor.normalize_obs(self._cast(obs)))

    # ------------------------------------------------------------------ chains

    def _fields(self, obs: Tensor) -> tuple[Tensor, Any, Any]:
        """Normalized obs and the (velocity, std) fields of the chain conditioned on them."""
        obs_n = self.actor.normalize_obs(self._cast(obs))
        velocity = self.actor.velocity_fn(obs_n, self.num_steps)
        return obs_n, velocity, lambda t, x: self.sigma(t, obs_n)

    def sample(self, obs: Tensor, generator: torch.Generator | None = None) -> NoisyChain:
        """Sample noisy chains with their exact log-likelihoods.

        Args:
            obs: Raw observations, shape (B, Do).
            generator: RNG for a⁰ and the injected noise.

        Returns:
            Chains (B, K+1, Da) and log-likelihoods (B,).
        """
        _, velocity, std = self._fields(obs)
        a0 = self._initial_state(obs, generator)
        sampled = sample_noisy_chain(
            velocity, std, a0, self.num_steps, include_initial=False, generator=generator
        )
        return NoisyChain(sampled.chain, sampled.log_prob + self._initial_log_prob(a0))

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
        _, velocity, _ = self._fields(obs)
        shape = (obs.shape[0], self.actor.config.action_dim)
        a0 = torch.zeros(shape, device=obs.device, dtype=self.dtype)
        return integrate(velocity, a0, self.num_steps, "euler", return_trajectory=True)

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
        t, dt = time_grid(self.num_steps, device=a_k.device, dtype=a_k.dtype)
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
        return self._score_chain(obs, chain)[0]

    def evaluate_chain(self, obs: Tensor, chain: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Everything a PPO minibatch needs, sharing one normalization and one σ pass.

        Args:
            obs: Raw observations, shape (B, Do).
            chain: Chains, shape (B, K+1, Da).

        Returns:
            ``(log_prob (B,), entropy (B,), values (B,))``: as :meth:`log_prob_chain`,
            :meth:`entropy_chain` and :meth:`predict_values` would give them.
        """
        log_prob, sigma, obs_n = self._score_chain(obs, chain)
        entropy = (0.5 * math.log(2 * math.pi * math.e) + torch.log(sigma)).sum(dim=(0, 2))
        return log_prob, entropy, self.value_net(obs_n).flatten()

    def _score_chain(self, obs: Tensor, chain: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Chain log-likelihood (B,), the σ it used (K, B, Da) and the normalized obs (B, Do).

        All K transitions of a stored chain are scored in one fused call of each network
        on K·B rows (conditioning repeated step-major, as the flow core expects).
        """
        self._check_chain(chain)
        obs_n = self.actor.normalize_obs(self._cast(obs))
        obs_rep = obs_n.repeat(self.num_steps, 1)
        sigmas: list[Tensor] = []

        def std(t: Tensor, x: Tensor) -> Tensor:
            sigmas.append(self.sigma(t, obs_rep))
            return sigmas[-1]

        velocity = self.actor.velocity_fn(obs_rep, self.num_steps)
        chain = self._cast(chain)
        log_prob = noisy_chain_log_prob(velocity, std, chain, include_initial=False, fused=True)
        log_prob = log_prob + self._initial_log_prob(chain[:, 0])
        return log_prob, sigmas[0].reshape(self.num_steps, obs.shape[0], -1), obs_n

    def sigma_grid(self, obs: Tensor) -> Tensor:
        """σ_φ(t_k, o) at every grid time, shape (K, B, Da), in one noise-net pass."""
        obs_n = self.actor.normalize_obs(self._cast(obs))
        t, _ = time_grid(self.num_steps, device=obs.device, dtype=self.dtype)
        batch = obs.shape[0]
        sigma = self.sigma(t.repeat_interleave(batch), obs_n.repeat(self.num_steps, 1))
        return sigma.reshape(self.num_steps, batch, -1)

    def entropy_chain(self, obs: Tensor, chain: Tensor) -> Tensor:
        """Entropy of the chain's Gaussian transitions, Σ_k Σ_d ½·log(2πe·σ²), shape (B,).

        σ depends on (t_k, o) only, so the chain fixes just its length K.
        """
        self._check_chain(chain)
        per_dim = 0.5 * math.log(2 * math.pi * math.e) + torch.log(self.sigma_grid(obs))
        return per_dim.sum(dim=(0, 2))

    def bc_regularizer(self, obs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Squared W2 proxy to the frozen pretrained flow, shape (B,).

        Both flows integrate the same a⁰ ~ N(0, I) deterministically over K steps; the
        squared distance of their endpoints (summed over dims) upper-bounds W2² of the two
        action distributions, since the shared a⁰ is one coupling.
        """
        obs_n = self.actor.normalize_obs(self._cast(obs))
        a0 = self._noise(obs, generator)
        ours = integrate(self.actor.velocity_fn(obs_n, self.num_steps), a0, self.num_steps)
        with torch.no_grad():
            ref_obs_n = self.reference.normalize_obs(self._cast(obs))
            ref = integrate(
                self.reference.velocity_fn(ref_obs_n, self.num_steps), a0, self.num_steps
            )
        return (ours - ref).square().sum(dim=-1)

    def to_env_action(self, a_k: Tensor) -> Tensor:
        """Map normalized final states a^K (B, Da) to env actions, clipped into the box."""
        return self.actor.action_normalizer.unnormalize(a_k, clip=True)

    # ------------------------------------------------------------------ SB3 faces

    def forward(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, ...]:
        """Rollout step: env actions (B, Da), values (B,), log-probs (B,), chains (B, K+1, Da)."""
        if deterministic:
            chain = self.sample_chain(obs, deterministic=True)
            log_prob = torch.zeros(obs.shape[0], device=obs.device)
        else:
            sampled = self.sample(obs)
            chain, log_prob = sampled.chain, sampled.log_prob
        values = self.predict_values(obs).flatten()
        return self.to_env_action(chain[:, -1]), values, log_prob, chain

    def _predict(self, observation: Tensor, deterministic: bool = False) -> Tensor:
        """Env actions (B, Da) for SB3's ``predict``."""
        chain = self.sample_chain(observation, deterministic=deterministic)
        return self.to_env_action(chain[:, -1])

    def set_training_mode(self, mode: bool) -> None:
        """Train/eval mode for the trained parts; the reference flow always stays in eval."""
        super().set_training_mode(mode)
        self.reference.eval()
