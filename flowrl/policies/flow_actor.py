"""FlowActor: a conditional flow-matching model of actions given observations.

This is the model that behaviour cloning trains and that the RL policies (ReinFlow's
``FlowPolicy`` and friends) wrap. It owns its observation and action normalizers, so a
checkpoint carries everything needed to act:

* observations are standardised by ``obs_normalizer`` before they reach the network;
* the flow runs in the normalized action space, where the env's action box is [−1, 1]^Da;
  ``action_normalizer`` maps to and from the env's units at the edge.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from flowrl.data.normalizers import Normalizer
from flowrl.flow.integrators import METHODS, VelocityFn, integrate
from flowrl.flow.losses import flow_matching_loss, shortcut_loss
from flowrl.flow.times import Steps, TimeGrid, TimeSampler, UniformTime, as_steps, num_steps_of
from flowrl.nets.mlp import VelocityMLP

__all__ = ["CHECKPOINT_FORMAT", "FlowActor", "FlowActorConfig"]

CHECKPOINT_FORMAT = 1


@dataclass
class FlowActorConfig:
    """Architecture and sampling defaults of a :class:`FlowActor`.

    Attributes:
        obs_dim: Do, observation width (0 for an unconditional model).
        action_dim: Da, action width.
        width: Hidden width of the velocity network.
        depth: Residual blocks of the velocity network.
        time_dim: Width of the time (and step-size) embedding.
        act: Activation name.
        num_steps: Default K for sampling.
        method: Default integrator (``"euler"``, ``"midpoint"``, ``"heun"``).
        shortcut: Train and sample as a shortcut model (step-size-conditioned).
        shortcut_max_steps: M, the finest shortcut step is 1/M (power of two).
        shortcut_bootstrap_fraction: Fraction of each batch used for self-consistency.
        gated: Gated velocity ``v = g ⊙ (ĥ − x)`` (Flow-G, arXiv 2509.25756; see
            :class:`~flowrl.nets.mlp.VelocityMLP`): each Euler step is a convex update of the
            action, which keeps gradients through a K-step chain bounded (FlowSAC's option).
            BC trains it like any velocity net.
    """

    obs_dim: int
    action_dim: int
    width: int = 256
    depth: int = 3
    time_dim: int = 32
    act: str = "mish"
    num_steps: int = 8
    method: str = "euler"
    shortcut: bool = False
    shortcut_max_steps: int = 128
    shortcut_bootstrap_fraction: float = 0.25
    gated: bool = False

    def __post_init__(self) -> None:
        if self.obs_dim < 0 or self.action_dim < 1:
            raise ValueError(
                f"need obs_dim >= 0, action_dim >= 1, got {self.obs_dim}, {self.action_dim}"
            )
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {METHODS}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        M = self.shortcut_max_steps
        if self.shortcut and (M < 2 or M & (M - 1)):
            raise ValueError(
                f"shortcut_max_steps must be a power of two >= 2 for a shortcut actor, got {M}"
            )

    def shortcut_num_steps(self) -> tuple[int, ...]:
        """The K a shortcut actor was trained to sample with: 1, 2, 4, …, M.

        :func:`~flowrl.flow.losses.shortcut_loss` trains the step sizes d = 1/M (flow-matching
        rows) and d = 2^−e for e = 0 … log2(M) − 1 (self-consistency rows); K-step sampling
        on THE grid queries d = 1/K, so K must be a power of two no larger than M.
        """
        return tuple(2**e for e in range(self.shortcut_max_steps.bit_length()))


class FlowActor(nn.Module):
    """Velocity network v(t, a, o) over normalized actions, with its normalizers.

    Args:
        config: Architecture and sampling defaults.
        obs_normalizer: Maps raw observations (…, Do) to network inputs; identity if None.
        action_normalizer: Maps env actions (…, Da) to the normalized box; identity if None.
    """

    # What the network predicts: a flow velocity here; the noise ε in DiffusionActor.
    predicts: ClassVar[str] = "velocity"

    def __init__(
        self,
        config: FlowActorConfig,
        obs_normalizer: Normalizer | None = None,
        action_normalizer: Normalizer | None = None,
    ):
        super().__init__()
        self.config = config
        self.obs_normalizer = obs_normalizer or Normalizer.identity(max(config.obs_dim, 1))
        self.action_normalizer = action_normalizer or Normalizer.identity(config.action_dim)
        if config.obs_dim and self.obs_normalizer.dim != config.obs_dim:
            raise ValueError(
                f"obs normalizer has dim {self.obs_normalizer.dim}, config.obs_dim={config.obs_dim}"
            )
        if self.action_normalizer.dim != config.action_dim:
            raise ValueError(
                f"action normalizer has dim {self.action_normalizer.dim}, "
                f"config.action_dim={config.action_dim}"
            )
        self.velocity_net = VelocityMLP(
            x_dim=config.action_dim,
            cond_dim=config.obs_dim,
            width=config.width,
            depth=config.depth,
            time_dim=config.time_dim,
            step_size_input=config.shortcut,
            act=config.act,
            gated=config.gated,
        )

    # ------------------------------------------------------------------ network face

    def normalize_obs(self, obs: Tensor) -> Tensor:
        """Raw observations (B, Do) → network conditioning (B, Do); checks shape and NaN."""
        if obs.dim() != 2 or obs.shape[1] != self.config.obs_dim:
            raise ValueError(
                f"observations must have shape (B, {self.config.obs_dim}), got {tuple(obs.shape)}"
            )
        if not torch.isfinite(obs).all():
            raise ValueError("observations contain NaN or inf; check the env or the dataset")
        if self.config.obs_dim == 0:
            return obs
        return self.obs_normalizer.normalize(obs)

    def velocity(self, t: Tensor, x: Tensor, obs_n: Tensor, d: Tensor | None = None) -> Tensor:
        """Velocity in normalized action space.

        Args:
            t: Flow times, shape (B,).
            x: Normalized actions on the path, shape (B, Da).
            obs_n: Normalized observations, shape (B, Do).
            d: Shortcut step sizes, shape (B,); required iff ``config.shortcut``.

        Returns:
            Velocity, shape (B, Da).
        """
        return self.velocity_net(t, x, obs_n if self.config.obs_dim else None, d)

    def check_num_steps(self, num_steps: Steps) -> None:
        """Raise unless ``num_steps`` (K, or a TimeGrid) is a grid this actor can sample with.

        Any positive int or :class:`~flowrl.flow.times.TimeGrid` for a plain flow; for a
        shortcut actor only the uniform grids whose step size 1/K it was trained on
        (:meth:`FlowActorConfig.shortcut_num_steps`): any other K, or a non-uniform grid
        (e.g. BOSS's), would silently query step sizes it never learned.

        Raises:
            ValueError: If K is not a positive int, not a trained shortcut step count, or the
                grid is non-uniform for a shortcut actor.
        """
        if isinstance(num_steps, TimeGrid) and self.config.shortcut and not num_steps.is_uniform:
            raise ValueError(
                f"this shortcut actor was trained on uniform steps d = 1/K and cannot "
                f"sample on the non-uniform grid {num_steps!r}: its step-size input would "
                "be queried at sizes it never learned. Use an int num_steps (uniform "
                "grid), or a plain (shortcut=False) flow actor for a BOSS grid"
            )
        num_steps = num_steps_of(num_steps)  # K, validated
        if self.config.shortcut and num_steps not in self.config.shortcut_num_steps():
            valid = self.config.shortcut_num_steps()
            raise ValueError(
                f"num_steps K={num_steps} is not a step count this shortcut actor was trained "
                f"for: it learned the step sizes 1/K for K in {valid} "
                f"(shortcut_max_steps={self.config.shortcut_max_steps}), and d = 1/{num_steps} "
                f"is not one of them; sample with num_steps in {valid}"
            )

    def velocity_fn(self, obs_n: Tensor, num_steps: Steps) -> VelocityFn:
        """The velocity field ``(t, x) -> v`` that K-step sampling integrates.

        Shortcut models are told the step size 1/K they are about to take.

        Args:
            obs_n: Normalized observations, shape (B, Do).
            num_steps: K or a :class:`~flowrl.flow.times.TimeGrid` (for a shortcut actor a
                uniform grid with K in :meth:`FlowActorConfig.shortcut_num_steps`).

        Returns:
            A :data:`~flowrl.flow.integrators.VelocityFn`.

        Raises:
            ValueError: If K is not a step count this actor was trained for
                (:meth:`check_num_steps`).
        """
        self.check_num_steps(num_steps)
        if not self.config.shortcut:
            return lambda t, x: self.velocity(t, x, obs_n)
        d = obs_n.new_full((obs_n.shape[0],), 1.0 / num_steps_of(num_steps))
        return lambda t, x: self.velocity(t, x, obs_n, d)

    # ------------------------------------------------------------------ sampling

    def _chain_start(
        self,
        obs: Tensor,
        num_steps: Steps | None,
        noise: Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[Steps, Tensor, Tensor]:
        """K (checked before any random draw), normalized observations and the chain start a⁰.

        Raises:
            ValueError: For a K the actor cannot sample with, or ``noise`` of the wrong shape.
        """
        num_steps = self.config.num_steps if num_steps is None else as_steps(num_steps)
        self.check_num_steps(num_steps)
        shape = (obs.shape[0], self.config.action_dim)
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=obs.device)
        elif noise.shape != shape:
            raise ValueError(
                f"noise must have shape {shape} to match the observations, got {tuple(noise.shape)}"
            )
        return num_steps, self.normalize_obs(obs), noise

    def sample_normalized(
        self,
        obs: Tensor,
        num_steps: Steps | None = None,
        method: str | None = None,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample normalized actions by integrating the ODE from Gaussian noise.

        Args:
            obs: Raw observations, shape (B, Do).
            num_steps: K (default ``config.num_steps``) or a
                :class:`~flowrl.flow.times.TimeGrid` (e.g. a BOSS grid); for a shortcut actor
                a uniform K in :meth:`FlowActorConfig.shortcut_num_steps`.
            method: Integrator (default ``config.method``).
            noise: Initial a⁰, shape (B, Da); drawn from N(0, I) if omitted.
            generator: RNG for the initial noise.

        Returns:
            Normalized actions a^K, shape (B, Da) (not clipped).

        Raises:
            ValueError: For a K the actor was not trained to sample with
                (:meth:`check_num_steps`), or noise of the wrong shape.
        """
        num_steps, obs_n, noise = self._chain_start(obs, num_steps, noise, generator)
        velocity = self.velocity_fn(obs_n, num_steps)
        return integrate(velocity, noise, num_steps, method or self.config.method)  # type: ignore[arg-type]

    def sample(
        self,
        obs: Tensor,
        num_steps: Steps | None = None,
        method: str | None = None,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        clip: bool = False,
    ) -> Tensor:
        """Sample actions in env units; see :meth:`sample_normalized` for the arguments.

        Args:
            obs: Raw observations, shape (B, Do).
            num_steps: K or a :class:`~flowrl.flow.times.TimeGrid`.
            method: Integrator.
            noise: Initial a⁰, shape (B, Da).
            generator: RNG for the initial noise.
            clip: Clip to the action box (the normalized [−1, 1] box, then the exact
                env-unit bounds when the normalizer was built by ``Normalizer.box``).

        Returns:
            Actions, shape (B, Da).
        """
        a = self.sample_normalized(obs, num_steps, method, noise=noise, generator=generator)
        return self.action_normalizer.unnormalize(a, clip=clip)

    # ------------------------------------------------------------------ training

    def bc_loss(
        self,
        obs: Tensor,
        actions: Tensor,
        *,
        time_sampler: TimeSampler | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Behaviour-cloning loss on a batch of (observation, action) pairs.

        Flow matching for plain models; flow matching plus shortcut self-consistency for
        shortcut models.

        Args:
            obs: Raw observations, shape (B, Do).
            actions: Env-unit actions, shape (B, Da).
            time_sampler: Times for the flow-matching rows (default uniform).
            generator: RNG for times and noise.

        Returns:
            ``{"loss": scalar batch mean to minimise, ...}``; shortcut models add
            ``"flow_matching"`` and ``"self_consistency"`` (detached).
        """
        if actions.dim() != 2 or actions.shape[1] != self.config.action_dim:
            raise ValueError(
                f"actions must have shape (B, {self.config.action_dim}), got {tuple(actions.shape)}"
            )
        obs_n = self.normalize_obs(obs)
        data = self.action_normalizer.normalize(actions)
        noise = torch.randn(data.shape, generator=generator, device=data.device, dtype=data.dtype)
        time_sampler = time_sampler or UniformTime()
        if not self.config.shortcut:
            t = time_sampler(
                data.shape[0], device=data.device, dtype=data.dtype, generator=generator
            )
            loss = flow_matching_loss(lambda tt, x: self.velocity(tt, x, obs_n), data, t, noise)
            return {"loss": loss}
        terms = shortcut_loss(
            lambda tt, x, d, cond: self.velocity(tt, x, cond, d),
            data,
            noise,
            obs_n,
            time_sampler=time_sampler,
            bootstrap_fraction=self.config.shortcut_bootstrap_fraction,
            max_steps=self.config.shortcut_max_steps,
            generator=generator,
        )
        return {
            "loss": terms.loss,
            "flow_matching": terms.flow_matching,
            "self_consistency": terms.self_consistency,
        }

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self) -> dict[str, Any]:
        """A self-describing checkpoint dict (class tag, format, config, weights)."""
        return {
            "class": type(self).__name__,
            "format": CHECKPOINT_FORMAT,
            "config": asdict(self.config),
            "state_dict": self.state_dict(),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`checkpoint` to ``path`` atomically (a crash never leaves half a file)."""
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp"
        torch.save(self.checkpoint(), tmp)
        os.replace(tmp, path)

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> FlowActor:
        """Rebuild an actor from :meth:`checkpoint`'s dict, refusing foreign checkpoints."""
        if not isinstance(ckpt, dict) or "class" not in ckpt or "state_dict" not in ckpt:
            raise ValueError(
                "not a flowrl checkpoint: expected a dict with 'class' and 'state_dict'"
            )
        if ckpt["class"] != cls.__name__:
            raise ValueError(
                f"checkpoint holds a {ckpt['class']!r}, not a {cls.__name__!r}: "
                f"load it with {ckpt['class']}.load"
            )
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"checkpoint format {ckpt.get('format')!r} is not supported "
                f"(this flowrl reads format {CHECKPOINT_FORMAT})"
            )
        known = {f.name for f in fields(FlowActorConfig)}
        config = FlowActorConfig(**{k: v for k, v in ckpt["config"].items() if k in known})
        state = ckpt["state_dict"]
        actor = cls(
            config,
            Normalizer.from_state_dict(state, prefix="obs_normalizer."),
            Normalizer.from_state_dict(state, prefix="action_normalizer."),
        )
        actor.load_state_dict(state)
        return actor

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> FlowActor:
        """Load an actor saved by :meth:`save`.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If the file is unreadable (damaged, truncated, or holding pickled
                objects, which are never unpickled) or not a flowrl checkpoint of this class;
                the message names the file.
        """
        from flowrl.checkpoints import file_kind, load_checkpoint_file  # (they need SB3)

        if file_kind(path) == "sb3":
            raise ValueError(
                f"{os.fspath(path)!r} is a Stable-Baselines3 model .zip (a whole trained model), "
                f"not a {cls.__name__} checkpoint: load it with its learner (e.g. "
                "ReinFlow.load(path)); pretrained= and FlowActor.load take a BC actor saved by "
                "FlowActor.save (e.g. the bc stage's bc.pt)"
            )
        ckpt = load_checkpoint_file(path, f"{cls.__name__} checkpoint")
        try:
            return cls.from_checkpoint(ckpt).to(map_location)
        except (KeyError, RuntimeError, TypeError, ValueError) as err:
            # Missing or misshapen tensors surface as KeyError/RuntimeError from torch.
            raise ValueError(f"checkpoint {os.fspath(path)!r}: {err}") from err
