"""Time: THE K-step integration grid and the training-time samplers.

Convention (DESIGN.md §3): t ∈ [0, 1], t = 0 is noise and t = 1 is data.

Every sampler, likelihood, pretraining loop and evaluation in flowrl obtains its
integration times from :func:`time_grid`. Do not build a grid anywhere else: a peer
implementation once sampled on one grid and scored likelihoods on another, and its PPO
ratio on fresh data was 0.889 instead of 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

__all__ = [
    "BetaTime",
    "Steps",
    "TimeGrid",
    "as_steps",
    "num_steps_of",
    "steps_to_plain",
    "LogitNormalTime",
    "TimeSampler",
    "UniformTime",
    "make_time_sampler",
    "time_grid",
]


@dataclass(frozen=True)
class TimeGrid:
    """A K-step integration grid given by its knots 0 = τ_0 < τ_1 < … < τ_K = 1.

    This is a *value* of THE grid, never a second grid function: every consumer passes it
    (or a plain int K, the uniform grid) to :func:`time_grid`, which turns it into the
    steps (t_k, Δt_k) = (τ_k, τ_{k+1} − τ_k). Non-uniform grids come from
    :func:`flowrl.flow.boss.bellman_grid` (BOSS) or are written by hand.

    The knots are plain Python floats (a checkpoint stores :meth:`to_list` and is read back
    with ``weights_only=True``). ``TimeGrid.uniform(K)`` reproduces ``time_grid(K)`` bit for
    bit: :func:`time_grid` recognizes a uniform grid and takes the int path.

    Attributes:
        knots: τ_0 … τ_K, strictly increasing, finite, τ_0 = 0.0 and τ_K = 1.0 exactly.

    Raises:
        ValueError: For fewer than two knots, non-finite or non-increasing knots, or ends
            other than exactly 0 and 1.
    """

    knots: tuple[float, ...]

    def __post_init__(self) -> None:
        try:
            knots = tuple(float(k) for k in self.knots)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"TimeGrid knots must be a sequence of floats, got {self.knots!r}"
            ) from err
        if len(knots) < 2:
            raise ValueError(
                f"a TimeGrid needs K + 1 >= 2 knots (0 = τ_0 < … < τ_K = 1), got {list(knots)}"
            )
        if not all(math.isfinite(k) for k in knots):
            raise ValueError(f"TimeGrid knots must be finite, got {list(knots)}")
        if knots[0] != 0.0 or knots[-1] != 1.0:
            raise ValueError(
                f"TimeGrid knots must start at exactly 0.0 (noise) and end at exactly 1.0 (data), "
                f"got τ_0 = {knots[0]!r} and τ_K = {knots[-1]!r}"
            )
        bad = [i for i in range(len(knots) - 1) if not knots[i] < knots[i + 1]]
        if bad:
            i = bad[0]
            raise ValueError(
                f"TimeGrid knots must be strictly increasing; τ_{i} = {knots[i]!r} >= "
                f"τ_{i + 1} = {knots[i + 1]!r}"
            )
        object.__setattr__(self, "knots", knots)

    @classmethod
    def uniform(cls, num_steps: int) -> TimeGrid:
        """The uniform K-step grid τ_k = k/K (what ``time_grid(K)`` returns)."""
        _check_num_steps(num_steps)
        knots = [k / num_steps for k in range(num_steps)] + [1.0]
        return cls(tuple(knots))

    @property
    def num_steps(self) -> int:
        """K, the number of steps."""
        return len(self.knots) - 1

    @property
    def is_uniform(self) -> bool:
        """Whether the knots are exactly k/K (then :func:`time_grid` takes the int path)."""
        K = self.num_steps
        return all(k == i / K for i, k in enumerate(self.knots[:-1]))

    @property
    def step_sizes(self) -> tuple[float, ...]:
        """Δτ_k = τ_{k+1} − τ_k, k = 0 … K−1."""
        return tuple(b - a for a, b in zip(self.knots[:-1], self.knots[1:], strict=True))

    def to_list(self) -> list[float]:
        """The knots as a list of plain floats (JSON and ``weights_only`` checkpoints)."""
        return list(self.knots)

    @classmethod
    def from_list(cls, knots: Sequence[float]) -> TimeGrid:
        """Rebuild a grid from :meth:`to_list` (validated)."""
        return cls(tuple(knots))

    def __repr__(self) -> str:
        shown = ", ".join(f"{k:.4g}" for k in self.knots)
        return f"TimeGrid(K={self.num_steps}, knots=[{shown}])"


Steps = int | TimeGrid
"""What every sampler takes for its grid: an int K (uniform) or a :class:`TimeGrid`."""


def _check_num_steps(num_steps: object) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int or a TimeGrid, got {num_steps!r}")


def as_steps(steps: Steps | Sequence[float]) -> Steps:
    """Normalize a grid argument: an int K, a :class:`TimeGrid`, or a knot list (→ TimeGrid).

    A knot list is what checkpoints store (:meth:`TimeGrid.to_list`).

    Raises:
        ValueError: For anything else, or an invalid K or knot list.
    """
    if isinstance(steps, TimeGrid):
        return steps
    if isinstance(steps, Sequence) and not isinstance(steps, (str, bytes)):
        return TimeGrid.from_list(steps)  # a knot list (a checkpoint's, or a config's)
    _check_num_steps(steps)
    return steps  # type: ignore[return-value]


def num_steps_of(steps: Steps) -> int:
    """K of a grid argument (an int K or a :class:`TimeGrid`), validated.

    Raises:
        ValueError: For a non-positive or non-int K, or something that is not a grid.
    """
    if isinstance(steps, TimeGrid):
        return steps.num_steps
    _check_num_steps(steps)
    return steps  # type: ignore[return-value]


def steps_to_plain(steps: Steps) -> int | list[float]:
    """A grid argument as plain data: K for an int, the knot list for a :class:`TimeGrid`."""
    return steps.to_list() if isinstance(steps, TimeGrid) else num_steps_of(steps)


def time_grid(
    num_steps: Steps,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Return THE K-step grid from noise (t = 0) to data (t = 1).

    For an int K (the default everywhere), step k (k = 0 … K−1) starts at ``t_k = k / K``
    and has width ``Δt_k = 1 / K``: the uniform grid that shortcut models are trained on
    (their step-size input is ``1 / K``). For a :class:`TimeGrid` with knots τ_0 … τ_K,
    ``t_k = τ_k`` and ``Δt_k = τ_{k+1} − τ_k`` (computed in float64, then cast); a grid
    whose knots are exactly k/K is returned exactly as for the int K. Either way the steps
    tile [0, 1] and ``t_k + Δt_k = t_{k+1}``. Change it here and every consumer follows.

    Args:
        num_steps: K ≥ 1, the number of integration steps, or a :class:`TimeGrid`.
        device: Device of the returned tensors.
        dtype: Floating dtype of the returned tensors.

    Returns:
        ``(t, dt)``, each of shape (K,): start time and width of every step.

    Raises:
        ValueError: If ``num_steps`` is neither a positive integer nor a TimeGrid.
    """
    if isinstance(num_steps, TimeGrid):
        if num_steps.is_uniform:
            return time_grid(num_steps.num_steps, device=device, dtype=dtype)
        knots = torch.tensor(num_steps.knots, dtype=torch.float64)
        t, dt = knots[:-1], knots[1:] - knots[:-1]
        return t.to(device=device, dtype=dtype), dt.to(device=device, dtype=dtype)
    _check_num_steps(num_steps)
    t = torch.arange(num_steps, device=device, dtype=dtype) / num_steps
    dt = torch.full((num_steps,), 1.0 / num_steps, device=device, dtype=dtype)
    return t, dt


class TimeSampler(Protocol):
    """Draws training times t ∈ [0, 1] for flow-matching losses."""

    def __call__(
        self,
        n: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Return ``n`` times, shape (n,)."""
        ...


class _Sampler:
    """Shared call signature of the samplers below; each implements ``_draw``."""

    def __call__(
        self,
        n: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Return ``n`` times, shape (n,), on ``device`` in ``dtype``."""
        return self._draw(n, device, dtype, generator)

    def _draw(
        self,
        n: int,
        device: torch.device | str | None,
        dtype: torch.dtype,
        gen: torch.Generator | None,
    ) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class UniformTime(_Sampler):
    """t ~ U[low, high]."""

    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.low < self.high <= 1.0:
            raise ValueError(f"need 0 <= low < high <= 1, got low={self.low}, high={self.high}")

    def _draw(
        self,
        n: int,
        device: torch.device | str | None,
        dtype: torch.dtype,
        gen: torch.Generator | None,
    ) -> Tensor:
        u = torch.rand(n, device=device, dtype=dtype, generator=gen)
        return self.low + (self.high - self.low) * u


@dataclass(frozen=True)
class LogitNormalTime(_Sampler):
    """t = sigmoid(m + s·ξ), ξ ~ N(0, 1): concentrates training on mid-path times.

    Esser et al. 2024 (Stable Diffusion 3) found m = 0, s = 1 best for rectified flows.
    """

    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if not self.std > 0:
            raise ValueError(f"std must be positive, got {self.std}")

    def _draw(
        self,
        n: int,
        device: torch.device | str | None,
        dtype: torch.dtype,
        gen: torch.Generator | None,
    ) -> Tensor:
        xi = torch.randn(n, device=device, dtype=dtype, generator=gen)
        return torch.sigmoid(self.mean + self.std * xi)


@dataclass(frozen=True)
class BetaTime(_Sampler):
    """t ~ Beta(alpha, beta), optionally scaled into [0, t_max].

    π0 (Black et al. 2024) samples Beta(1.5, 1) to emphasise the noisy end; in our
    convention (t = 0 noise) that is ``BetaTime(alpha=1.0, beta=1.5)``.
    """

    alpha: float = 1.0
    beta: float = 1.5
    t_max: float = 1.0

    def __post_init__(self) -> None:
        if not (self.alpha > 0 and self.beta > 0):
            raise ValueError(f"alpha and beta must be positive, got {self.alpha}, {self.beta}")
        if not 0.0 < self.t_max <= 1.0:
            raise ValueError(f"t_max must lie in (0, 1], got {self.t_max}")

    def _draw(
        self,
        n: int,
        device: torch.device | str | None,
        dtype: torch.dtype,
        gen: torch.Generator | None,
    ) -> Tensor:
        dist = torch.distributions.Beta(
            torch.tensor(self.alpha, dtype=dtype, device=device),
            torch.tensor(self.beta, dtype=dtype, device=device),
        )
        if gen is None:
            return self.t_max * dist.sample((n,))
        # torch's Gamma/Beta samplers take no generator: seed a forked global RNG from the
        # caller's generator so that seeded runs stay reproducible and the global stream is
        # left untouched.
        seed = int(torch.randint(0, 2**62, (1,), generator=gen).item())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.t_max * dist.sample((n,))


_SAMPLERS: dict[str, type] = {
    "uniform": UniformTime,
    "logit_normal": LogitNormalTime,
    "beta": BetaTime,
}


def make_time_sampler(name: str, **kwargs: float) -> TimeSampler:
    """Build a time sampler by name: ``"uniform"``, ``"logit_normal"`` or ``"beta"``.

    Args:
        name: Sampler name.
        **kwargs: Fields of the sampler's dataclass (e.g. ``mean=0.0, std=1.0``).

    Returns:
        The sampler.

    Raises:
        ValueError: For an unknown name or field.
    """
    if name not in _SAMPLERS:
        raise ValueError(f"unknown time sampler {name!r}; choose one of {sorted(_SAMPLERS)}")
    try:
        return _SAMPLERS[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for time sampler {name!r}: {err}") from err
