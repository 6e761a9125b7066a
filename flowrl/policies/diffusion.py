"""DiffusionPolicy: a DDPM/DDIM diffusion policy for DPPO, on the flow actors' nets.

The noise predictor ε̂(t, x, o) is a :class:`~flowrl.policies.FlowActor`'s conditional MLP,
with its observation and action normalizers, at flowrl times (t = 0 noise, t = 1 data):

* a :class:`DiffusionActor` (a FlowActor trained by the ε-prediction loss, e.g.
  ``FlowBC.from_dataset(..., actor_class=DiffusionActor)``) predicts ε̂ directly;
* a plain :class:`FlowActor` (flow matching) is read as an ε-predictor exactly through its
  linear path (:func:`~flowrl.flow.diffusion.epsilon_from_velocity`), so a flow BC
  checkpoint can be fine-tuned by DPPO too.

A K-step chain a⁰ → a^K walks THE grid; step k is the Gaussian of DDIM(η)
(:func:`~flowrl.flow.diffusion.denoising_step`; η = 1 is DDPM) with its std floored at
``sigma_min`` (DPPO's minimum denoising std, 0.1). The first K − K′ steps use the frozen
pretrained copy (``reference``); the last K′ = ``ft_denoising_steps`` use the fine-tuned
``actor``, and only those enter the likelihood, one Gaussian term per step (DPPO's
two-level MDP: each denoising step is an action of the inner MDP).
"""

from __future__ import annotations

import os
from typing import Any, Literal, NamedTuple

import torch
from gymnasium import spaces
from stable_baselines3.common.type_aliases import Schedule
from torch import Tensor, nn

from flowrl.data.normalizers import Normalizer
from flowrl.flow.diffusion import (
    ddpm_schedule,
    denoising_step,
    diffusion_sample,
    epsilon_from_velocity,
    epsilon_loss,
)
from flowrl.flow.integrators import VelocityFn, gaussian_entropy, gaussian_log_prob
from flowrl.flow.times import TimeGrid, TimeSampler, UniformTime, time_grid
from flowrl.policies.base import (
    FlowPolicyBase,
    check_sigma_bounds,
)
from flowrl.policies.flow_actor import FlowActor, FlowActorConfig

__all__ = ["DiffusionActor", "DiffusionChain", "DiffusionPolicy", "load_actor"]

Prediction = Literal["epsilon", "velocity"]


class DiffusionActor(FlowActor):
    """A :class:`FlowActor` whose network predicts the noise ε of a diffusion state.

    Same config, nets, normalizers and checkpoint format as :class:`FlowActor` (its class
    tag is ``"DiffusionActor"``, so neither loader takes the other's file). BC trains it
    with the ε-prediction loss on the cosine schedule; :meth:`sample` runs K DDPM steps.

    Args:
        config: Architecture (``shortcut`` must be False; ``method`` is unused).
        obs_normalizer: Maps raw observations to network inputs.
        action_normalizer: Maps env actions to the normalized box [−1, 1]^Da.
    """

    predicts = "epsilon"

    def __init__(
        self,
        config: FlowActorConfig,
        obs_normalizer: Normalizer | None = None,
        action_normalizer: Normalizer | None = None,
    ):
        if config.shortcut:
            raise ValueError(
                "a DiffusionActor has no shortcut form (shortcut=True is a flow-matching "
                "model): build it with shortcut=False"
            )
        super().__init__(config, obs_normalizer, action_normalizer)

    def eps(self, t: Tensor, x: Tensor, obs_n: Tensor) -> Tensor:
        """ε̂(t, x, o), shape (B, Da), for times (B,), states (B, Da), normalized obs (B, Do)."""
        return self.velocity_net(t, x, obs_n if self.config.obs_dim else None, None)

    def velocity_fn(self, obs_n: Tensor, num_steps: int) -> VelocityFn:
        """Refused: this network predicts noise, not a velocity.

        Raises:
            TypeError: Always, naming the policy that takes a DiffusionActor.
        """
        raise TypeError(
            "a DiffusionActor predicts the noise of a diffusion state, not a flow velocity: "
            "fine-tune it with DPPO (DiffusionPolicy), not with a flow learner"
        )

    def sample_normalized(
        self,
        obs: Tensor,
        num_steps: int | None = None,
        method: str | None = None,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample normalized actions with K DDPM steps (η = 1, x̂1 clamped to [−1, 1]).

        Args:
            obs: Raw observations, shape (B, Do).
            num_steps: K (default ``config.num_steps``).
            method: Ignored (a diffusion chain has one step rule); kept for the signature.
            noise: The chain start a⁰, shape (B, Da); drawn from N(0, I) if omitted.
            generator: RNG for a⁰ and the injected noise.

        Returns:
            Normalized actions a^K, shape (B, Da).
        """
        num_steps, obs_n, noise = self._chain_start(obs, num_steps, noise, generator)
        return diffusion_sample(
            lambda t, x: self.eps(t, x, obs_n), noise, num_steps, generator=generator
        )

    def bc_loss(
        self,
        obs: Tensor,
        actions: Tensor,
        *,
        time_sampler: TimeSampler | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """The ε-prediction denoising loss (DDPM's "simple" loss) on (obs, action) pairs.

        Args:
            obs: Raw observations, shape (B, Do).
            actions: Env-unit actions, shape (B, Da).
            time_sampler: Times t ∈ [0, 1] (default uniform).
            generator: RNG for times and noise.

        Returns:
            ``{"loss": scalar batch mean}``.
        """
        if actions.dim() != 2 or actions.shape[1] != self.config.action_dim:
            raise ValueError(
                f"actions must have shape (B, {self.config.action_dim}), got {tuple(actions.shape)}"
            )
        obs_n = self.normalize_obs(obs)
        data = self.action_normalizer.normalize(actions)
        noise = torch.randn(data.shape, generator=generator, device=data.device, dtype=data.dtype)
        t = (time_sampler or UniformTime())(
            data.shape[0], device=data.device, dtype=data.dtype, generator=generator
        )
        return {"loss": epsilon_loss(lambda tt, x: self.eps(tt, x, obs_n), data, t, noise)}


def load_actor(path: str | os.PathLike) -> FlowActor:
    """Load a :class:`DiffusionActor` or :class:`FlowActor` checkpoint by its class tag.

    Raises:
        FileNotFoundError: If there is no such file.
        ValueError: If it is not a readable actor checkpoint (the message names the file).
    """
    from flowrl.checkpoints import load_checkpoint_file  # (flowrl.checkpoints needs SB3)

    try:
        ckpt = load_checkpoint_file(path, "actor checkpoint")
    except ValueError:
        return FlowActor.load(path)  # raises with FlowActor's own message (SB3 zip, damage)
    tag = ckpt.get("class") if isinstance(ckpt, dict) else None
    return (DiffusionActor if tag == DiffusionActor.__name__ else FlowActor).load(path)


class DiffusionChain(NamedTuple):
    """A sampled denoising chain.

    Attributes:
        chain: States a⁰ … a^K, shape (B, K+1, Da), in the normalized action box.
        step_log_probs: (B, K′) float64: log N(a^{k+1}; μ_k, σ_k²) summed over Da for each
            fine-tuned step k = K − K′ … K − 1.
    """

    chain: Tensor
    step_log_probs: Tensor


class DiffusionPolicy(FlowPolicyBase):
    """DDPM/DDIM diffusion policy with a frozen pretrained prefix and a value function.

    Args:
        observation_space: Flat Box observations (Do,).
        action_space: Box actions (Da,).
        lr_schedule: Learning-rate schedule of the actor.
        sigma_min: Floor of every denoising step's std, in sampling and likelihood alike
            (DPPO's ``min_sampling_denoising_std`` = ``min_logprob_denoising_std`` = 0.1):
            the DDPM posterior std of the last steps is ~0, too little to explore with and
            an ill-conditioned likelihood.
        sigma_max: Optional cap on the std (None: none, as in DPPO).
        ft_denoising_steps: K′, the last denoising steps that are fine-tuned (None: all K).
            The first K − K′ use the frozen pretrained copy ``reference``.
        eta: DDIM's η of the chain: 1 (default) is DDPM's ancestral step, as DPPO's DDPM
            runs; smaller values give DDIM's narrower steps (the floor still applies).
        denoised_clip: Clamp of the data prediction x̂1 to [−c, c] in every step (DPPO's
            ``denoised_clip_value``, 1.0: the action box; None: no clamp).
        noise_clip: Clamp of the standard-normal draws of a stochastic chain to [−c, c]
            (DPPO's ``randn_clip_value``, 3 in its Gym configs; None: none). The
            likelihood stays the Gaussian's.
        prediction: What the actor's network predicts: ``"epsilon"`` (a
            :class:`DiffusionActor`) or ``"velocity"`` (a flow-matching
            :class:`FlowActor`, read through its linear path). None: from ``pretrained``'s
            class, else ``"epsilon"``.
        initial_std: Std c of the chain start a⁰ ~ N(0, c²I); 1 (default) is DDPM's prior.
        **kwargs: :class:`~flowrl.policies.base.FlowPolicyBase`'s arguments: ``pretrained``
            (a BC :class:`DiffusionActor` or :class:`FlowActor`, or its checkpoint),
            ``actor_config``, ``num_steps`` (K), ``value_hidden``, ``optimizer_class``, …

    ``predict(deterministic=True)`` runs the same chain without noise from a⁰ = 0: every
    state is the previous step's mean μ_k (DDPM's posterior mean for η = 1). Those means
    are exactly what DPPO's likelihood moves, so the evaluated path is the trained one
    (DESIGN's a⁰ convention, as FlowPolicy's ODE from a⁰ = 0). DDIM's η = 0 map would use
    another combination of ε̂ and x̂1, and DPPO's own deterministic DDPM mode keeps the
    unfloored posterior noise on all but the last step.

    From t = 0 an ε-net's data prediction divides by √ᾱ ≈ 0.03 (the clipped first step of
    :func:`~flowrl.flow.diffusion.ddpm_schedule`), so that step's x̂1 is mostly clamped to
    the box and carries little gradient; with K = 1 that is the whole chain. DPPO fine-tunes
    the last K′ of K ≥ 5 steps (K = 20, K′ = 10 in its Gym configs); a flow actor
    (``"velocity"``) has no such problem.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        *,
        sigma_min: float = 0.1,
        sigma_max: float | None = None,
        ft_denoising_steps: int | None = None,
        eta: float = 1.0,
        denoised_clip: float | None = 1.0,
        noise_clip: float | None = 3.0,
        prediction: Prediction | None = None,
        initial_std: float = 1.0,
        **kwargs: Any,
    ):
        if sigma_max is None:
            if not 0 < sigma_min < float("inf"):
                raise ValueError(
                    f"sigma_min (the floor of the denoising std) must be a finite number > 0, "
                    f"got {sigma_min}; DPPO uses 0.1"
                )
        else:
            check_sigma_bounds(sigma_min, sigma_max)
        if not 0 <= eta < float("inf"):
            raise ValueError(f"eta (DDIM's η) must be >= 0, got {eta}; 1 is DDPM")
        for name, value in (("denoised_clip", denoised_clip), ("noise_clip", noise_clip)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None (no clamp), got {value}")
        if prediction not in (None, "epsilon", "velocity"):
            raise ValueError(f"prediction must be 'epsilon' or 'velocity', got {prediction!r}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = None if sigma_max is None else float(sigma_max)
        self._ft_request = ft_denoising_steps
        self.eta = float(eta)
        self.denoised_clip = denoised_clip
        self.noise_clip = noise_clip
        self.prediction: Prediction | None = prediction
        self._grid_cache: tuple[Any, tuple[Tensor, Tensor, Tensor]] | None = None
        super().__init__(
            observation_space, action_space, lr_schedule, initial_std=initial_std, **kwargs
        )

    # ------------------------------------------------------------------ construction

    _pretrained_kinds = "a DiffusionActor or FlowActor"

    def _fresh_actor_class(self) -> type[FlowActor]:
        cls = FlowActor if self.prediction == "velocity" else DiffusionActor
        self.prediction = self.prediction or "epsilon"
        return cls

    def _load_pretrained(self, path: str | os.PathLike) -> FlowActor:
        return load_actor(path)

    def _accept_pretrained(self, actor: FlowActor, source: str) -> None:
        # Either network drives the chain; ``prediction`` follows the actor's, or must agree.
        kind: Prediction = "epsilon" if actor.predicts == "epsilon" else "velocity"
        if self.prediction is not None and self.prediction != kind:
            raise ValueError(
                f"prediction={self.prediction!r} contradicts {source}, whose network predicts "
                f"{'noise' if kind == 'epsilon' else 'a flow velocity'}: drop prediction="
            )
        self.prediction = kind

    def _build_noise(self, obs_dim: int, action_dim: int) -> None:
        # No noise network: the stds come from the schedule. K is known here.
        if isinstance(self.grid, TimeGrid) and not self.grid.is_uniform:
            raise ValueError(
                f"DiffusionPolicy (DPPO) runs the DDPM schedule on K uniform levels, as DPPO "
                f"defines it; the non-uniform grid {self.grid!r} (e.g. a BOSS grid of a flow) "
                "is not supported here: pass an int num_steps, or use a flow policy "
                "(FlowPolicy) for a BOSS grid"
            )
        ft = self.num_steps if self._ft_request is None else self._ft_request
        if isinstance(ft, bool) or not isinstance(ft, int) or not 1 <= ft <= self.num_steps:
            raise ValueError(
                f"ft_denoising_steps (K′, the fine-tuned last steps) must be an int in "
                f"[1, K = {self.num_steps}], got {self._ft_request!r}: lower it or raise "
                "num_steps"
            )
        self.ft_denoising_steps = ft

    def _actor_parameters(self) -> list[nn.Parameter]:
        return list(self.actor.parameters())

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            sigma_min=self.sigma_min,
            sigma_max=self.sigma_max,
            ft_denoising_steps=self.ft_denoising_steps,
            eta=self.eta,
            denoised_clip=self.denoised_clip,
            noise_clip=self.noise_clip,
            prediction=self.prediction,
        )
        return data

    # ------------------------------------------------------------------ one step

    @property
    def first_ft_step(self) -> int:
        """K − K′: the index of the first fine-tuned step."""
        return self.num_steps - self.ft_denoising_steps

    def _eps(self, net: FlowActor, t: Tensor, x: Tensor, obs_n: Tensor, ab: Tensor) -> Tensor:
        """ε̂ of states x (R, Da) at times t (R,) with ᾱ = ab (R,), from either kind of net."""
        if self.prediction == "epsilon":
            return net.velocity_net(t, x, obs_n if net.config.obs_dim else None, None)
        d = None
        if net.config.shortcut:  # its finest step: the instantaneous velocity
            d = obs_n.new_full((obs_n.shape[0],), 1.0 / net.config.shortcut_max_steps)
        return epsilon_from_velocity(lambda tau, y: net.velocity(tau, y, obs_n, d), x, ab)

    def _grid(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """THE grid's start times and ᾱ at both ends of each step, each (K,), cached.

        A rollout step walks all K steps; rebuilding the schedule in each of them cost
        more than the small networks' forward passes.
        """
        key = (self.num_steps, device, dtype)
        if self._grid_cache is None or self._grid_cache[0] != key:
            t, _ = time_grid(self.num_steps, device=device, dtype=dtype)
            start, end = ddpm_schedule(self.num_steps, device=device, dtype=dtype)
            self._grid_cache = (key, (t, start, end))
        return self._grid_cache[1]

    def _transition(
        self, net: FlowActor, obs_n: Tensor, x: Tensor, steps: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Mean and floored std (both (R, Da)) of steps ``steps`` (R,) from states x (R, Da)."""
        t, start, end = self._grid(x.device, x.dtype)
        ab_s, ab_u = start[steps][:, None], end[steps][:, None]
        eps = self._eps(net, t[steps], x, obs_n, start[steps])
        mean, sigma, _ = denoising_step(x, eps, ab_s, ab_u, eta=self.eta, clip=self.denoised_clip)
        std = sigma.clamp(min=self.sigma_min, max=self.sigma_max)
        return mean, torch.broadcast_to(std, mean.shape)

    def _net(self, k: int) -> FlowActor:
        """The network of step k: the frozen reference before K − K′, the actor after."""
        return self.actor if k >= self.first_ft_step else self.reference

    def step_distribution(self, obs: Tensor, a_k: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Gaussian (mean, std) of denoising step k → k+1, each (B, Da).

        Args:
            obs: Raw observations, shape (B, Do).
            a_k: States a^k, shape (B, Da).
            k: Step index in 0 … K−1 (steps before K − K′ use the frozen reference).
        """
        if not 0 <= k < self.num_steps:
            raise ValueError(f"step k must lie in [0, {self.num_steps}), got {k}")
        net = self._net(k)
        obs_n = net.normalize_obs(self._cast(obs))
        steps = torch.full((obs.shape[0],), k, device=obs.device, dtype=torch.long)
        return self._transition(net, obs_n, self._cast(a_k), steps)

    # ------------------------------------------------------------------ chains

    def _run_chain(
        self, obs: Tensor, a0: Tensor, noisy: bool, generator: torch.Generator | None
    ) -> DiffusionChain:
        """Walk the K steps from a⁰ (noisy, or each state the previous mean).

        Returns the chain and the log-probs of its fine-tuned steps (zeros if not noisy).
        """
        x, states, log_probs = a0, [a0], []
        obs = self._cast(obs)
        obs_n = {id(net): net.normalize_obs(obs) for net in {self._net(0), self.actor}}
        for k in range(self.num_steps):
            net = self._net(k)
            steps = torch.full((obs.shape[0],), k, device=obs.device, dtype=torch.long)
            mean, std = self._transition(net, obs_n[id(net)], x, steps)
            if noisy:
                z = torch.randn(mean.shape, generator=generator, device=x.device, dtype=x.dtype)
                if self.noise_clip is not None:
                    z = z.clamp(-self.noise_clip, self.noise_clip)
                x = mean + std * z
            else:
                x = mean
            if k >= self.first_ft_step:
                log_probs.append(
                    gaussian_log_prob(x, mean, std)
                    if noisy
                    else x.new_zeros(len(x), dtype=torch.float64)
                )
            states.append(x)
        return DiffusionChain(torch.stack(states, dim=1), torch.stack(log_probs, dim=1))

    def sample(self, obs: Tensor, generator: torch.Generator | None = None) -> DiffusionChain:
        """Sample chains and the log-likelihoods of their fine-tuned steps.

        Args:
            obs: Raw observations, shape (B, Do).
            generator: RNG for a⁰ and the injected noise.

        Returns:
            Chains (B, K+1, Da) and per-step log-likelihoods (B, K′).
        """
        return self._run_chain(obs, self._initial_state(obs, generator), True, generator)

    def sample_chain(
        self, obs: Tensor, deterministic: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """Chain a⁰ … a^K, shape (B, K+1, Da), in the normalized action box.

        Args:
            obs: Raw observations, shape (B, Do).
            deterministic: The noiseless mean chain from a⁰ = 0 instead of a sampled one.
            generator: RNG for the stochastic chain.
        """
        if not deterministic:
            return self.sample(obs, generator).chain
        a0 = torch.zeros(obs.shape[0], self.actor.config.action_dim, device=obs.device)
        return self._run_chain(obs, a0.to(self.dtype), False, None).chain

    def _check_chain(self, chain: Tensor) -> None:
        expected = (self.num_steps + 1, self.actor.config.action_dim)
        if chain.dim() != 3 or tuple(chain.shape[1:]) != expected:
            raise ValueError(
                f"chain must have shape (B, {expected[0]}, {expected[1]}), got {tuple(chain.shape)}"
            )

    def _score(self, obs: Tensor, chain: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-step log-likelihoods (B, K′), their stds (K′, B, Da) and the normalized obs.

        The K′ fine-tuned transitions are scored in one actor call on K′·B rows, step-major.
        """
        self._check_chain(chain)
        chain = self._cast(chain)
        batch, ft = chain.shape[0], self.ft_denoising_steps
        obs_n = self._obs_n(obs)
        segment = chain[:, self.first_ft_step :]  # (B, K′+1, Da)
        start = segment[:, :-1].transpose(0, 1).reshape(ft * batch, -1)
        end = segment[:, 1:].transpose(0, 1).reshape(ft * batch, -1)
        steps = torch.arange(self.first_ft_step, self.num_steps, device=chain.device)
        mean, std = self._transition(
            self.actor, obs_n.repeat(ft, 1), start, steps.repeat_interleave(batch)
        )
        log_probs = gaussian_log_prob(end, mean, std).reshape(ft, batch).T
        return log_probs, std.reshape(ft, batch, -1), obs_n

    def log_prob_steps(self, obs: Tensor, chain: Tensor) -> Tensor:
        """Log-likelihood of each fine-tuned step, summed over Da, shape (B, K′) float64.

        Args:
            obs: Raw observations, shape (B, Do).
            chain: Chains, shape (B, K+1, Da).
        """
        return self._score(obs, chain)[0]

    def log_prob_chain(self, obs: Tensor, chain: Tensor) -> Tensor:
        """Log-likelihood of the fine-tuned steps, summed over steps and dims, shape (B,).

        The frozen steps and a⁰ do not depend on the trained parameters and are left out.
        """
        return self.log_prob_steps(obs, chain).sum(dim=1)

    def evaluate_chain(self, obs: Tensor, chain: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """What a DPPO minibatch needs, from one pass.

        Returns:
            ``(step_log_probs (B, K′), entropy (B,), values (B,))``; the entropy is that of
            the fine-tuned steps' Gaussians, Σ_k Σ_d ½·log(2πe·σ_k²), which the schedule
            fixes (it has no gradient).
        """
        log_probs, std, obs_n = self._score(obs, chain)
        return log_probs, gaussian_entropy(std, dim=(0, 2)), self.value_net(obs_n).flatten()

    def step_stds(self) -> Tensor:
        """The std of every denoising step after the floor, shape (K,) (η and schedule only)."""
        start, end = ddpm_schedule(self.num_steps, dtype=torch.float64)
        _, sigma, _ = denoising_step(
            torch.zeros(self.num_steps), torch.zeros(self.num_steps), start, end, eta=self.eta
        )
        return sigma.clamp(min=self.sigma_min, max=self.sigma_max)

    # ------------------------------------------------------------------ regularizer, SB3

    def _endpoint(self, obs_n: Tensor, a0: Tensor) -> Tensor:
        """The noiseless K-step map from a⁰ (B, Da) for normalized obs: the mean chain's end."""
        x = a0
        for k in range(self.num_steps):
            net = self._net(k)
            steps = torch.full((a0.shape[0],), k, device=a0.device, dtype=torch.long)
            x = self._transition(net, obs_n, x, steps)[0]
        return x

    def bc_regularizer(self, obs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Squared distance of the noiseless chains' ends, policy vs frozen reference, (B,).

        Both run from the same a⁰ ~ N(0, c²I) (as rollouts draw it); an upper bound of W2²
        of the two mean maps' action distributions, as FlowPolicyBase's term for flows.
        """
        obs_n = self._obs_n(obs)
        a0 = self._initial_state(obs, generator)
        ours = self._endpoint(obs_n, a0)
        with torch.no_grad():
            x = a0
            for k in range(self.num_steps):
                steps = torch.full((a0.shape[0],), k, device=a0.device, dtype=torch.long)
                x = self._transition(self.reference, obs_n, x, steps)[0]
        return (ours - x).square().sum(dim=-1)

    def forward(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, ...]:
        """Rollout step: env actions (B, Da), values (B,), step log-probs (B, K′), chains."""
        if deterministic:
            chain = self.sample_chain(obs, deterministic=True)
            log_probs = torch.zeros(obs.shape[0], self.ft_denoising_steps, device=obs.device)
        else:
            chain, log_probs = self.sample(obs)
        values = self.predict_values(obs).flatten()
        return self.to_env_action(chain[:, -1]), values, log_probs, chain

    def _predict(self, observation: Tensor, deterministic: bool = False) -> Tensor:
        """Env actions (B, Da) for SB3's ``predict``."""
        chain = self.sample_chain(observation, deterministic=deterministic)
        return self.to_env_action(chain[:, -1])
