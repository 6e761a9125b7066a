"""BOSS: Bellman-optimal K-step time grids for a pretrained flow, and its straightening loss.

Nguyen, Nguyen & Nguyen, "Bellman Optimal Stepsize Straightening of Flow-Matching Models",
ICLR 2024 (arXiv 2312.16414). Two phases:

1. **Bellman optimal step sizes.** Candidate times 0 = s_0 < s_1 < … < s_N = 1 (a fine
   grid, N ≈ 100–200). Reference trajectories of the pretrained velocity v are integrated
   through all candidates with many small steps (:func:`reference_trajectory`). Jumping
   from candidate i to candidate j > i with ONE Euler step of v from the reference state
   costs its local truncation error against the reference state at s_j
   (:func:`local_error_costs`)::

       c(i, j) = E_x0 ‖x(s_j) − x(s_i) − (s_j − s_i)·v(s_i, x(s_i))‖.

   The K-step grid 0 → 1 minimizing Σ_k c(τ_k, τ_{k+1}) is found exactly by dynamic
   programming, V_k(j) = min_{i<j} V_{k−1}(i) + c(i, j), in O(K·N²)
   (:func:`bellman_path`); :func:`bellman_grid` does all of it and returns a
   :class:`~flowrl.flow.times.TimeGrid`, THE grid's value every sampler takes.
2. **Straightening.** Fine-tune v so that one Euler step on the chosen grid reproduces
   the reference trajectory between consecutive knots (:func:`straightening_loss`; the
   trainer for generators is :class:`flowrl.generative.boss.BossTrainer`).

Convention (DESIGN.md §3): t = 0 noise, t = 1 data; a velocity is ``v(t (B,), x (B, ...))``
with conditioning closed over by the caller. Everything here is stateless tensor maths.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from flowrl.flow.integrators import VelocityFn, integrate
from flowrl.flow.paths import expand_time
from flowrl.flow.times import Steps, TimeGrid, num_steps_of

__all__ = [
    "BOSS_METRICS",
    "BossResult",
    "bellman_grid",
    "bellman_path",
    "brute_force_path",
    "candidate_knots",
    "local_error_costs",
    "path_cost",
    "reference_trajectory",
    "straightening_loss",
    "uniform_indices",
]

Metric = Literal["l2", "mse"]
BOSS_METRICS: tuple[str, ...] = ("l2", "mse")


def candidate_knots(candidates: Steps) -> list[float]:
    """The candidate times s_0 = 0 < … < s_N = 1 as plain floats.

    Args:
        candidates: N (the uniform candidates i/N, computed exactly in Python) or a
            :class:`~flowrl.flow.times.TimeGrid` whose knots are the candidates.
    """
    if not isinstance(candidates, TimeGrid):
        candidates = TimeGrid.uniform(num_steps_of(candidates))
    return list(candidates.knots)


def _refine(knots: list[float], substeps: int) -> TimeGrid:
    """The grid with every interval of ``knots`` split into ``substeps`` equal parts."""
    fine = [
        a + (b - a) * m / substeps
        for a, b in zip(knots[:-1], knots[1:], strict=True)
        for m in range(substeps)
    ]
    return TimeGrid((*fine, 1.0))


def reference_trajectory(
    velocity: VelocityFn,
    x0: Tensor,
    candidates: Steps = 100,
    *,
    substeps: int = 1,
    method: str = "euler",
) -> Tensor:
    """Reference states of the flow at every candidate time, shape (N+1, B, ...).

    Integrates ``velocity`` from ``x0`` (t = 0) over the candidate grid with ``substeps``
    steps of ``method`` inside each candidate interval (through THE grid function), and
    keeps the states at the candidates.

    Args:
        velocity: Velocity field.
        x0: Starting noises, shape (B, ...).
        candidates: N or a :class:`~flowrl.flow.times.TimeGrid` of candidate times.
        substeps: Integration steps per candidate interval (≥ 1).
        method: Integrator (``"euler"``, ``"midpoint"``, ``"heun"``).

    Returns:
        States x(s_0) … x(s_N) (x(s_0) = x0), shape (N+1, B, ...), without a graph.
    """
    if isinstance(substeps, bool) or not isinstance(substeps, int) or substeps < 1:
        raise ValueError(f"substeps must be a positive int, got {substeps!r}")
    knots = candidate_knots(candidates)
    if substeps == 1:
        grid: Steps = candidates
    elif isinstance(candidates, int):
        grid = candidates * substeps
    else:
        grid = _refine(knots, substeps)
    with torch.no_grad():
        traj = integrate(velocity, x0, grid, method, return_trajectory=True)  # type: ignore[arg-type]
    return traj[:, ::substeps].transpose(0, 1).contiguous()


def local_error_costs(
    velocity: VelocityFn,
    trajectory: Tensor,
    candidates: Steps,
    *,
    metric: Metric = "l2",
    chunk: int | None = None,
) -> Tensor:
    """The cost matrix c(i, j) of one Euler step from candidate i to candidate j.

    ``c(i, j) = mean_b ‖x_b(s_j) − x_b(s_i) − (s_j − s_i)·v(s_i, x_b(s_i))‖`` (``"l2"``: the
    Euclidean norm over the non-batch dims, the local truncation error; ``"mse"``: the mean
    squared error per element instead), for i < j; ``inf`` for i ≥ j (no step backwards or
    of width 0). The velocity is read once per candidate (N calls of B rows); the residuals
    are formed in float64.

    Args:
        velocity: Velocity field.
        trajectory: Reference states at the candidates, shape (N+1, B, ...)
            (:func:`reference_trajectory`).
        candidates: N or the candidate :class:`~flowrl.flow.times.TimeGrid` (the same as for
            the trajectory).
        metric: ``"l2"`` or ``"mse"``.
        chunk: Candidates whose velocities are evaluated in one call (None: one each).

    Returns:
        Costs, shape (N+1, N+1), float64, on the trajectory's device.
    """
    if metric not in BOSS_METRICS:
        raise ValueError(f"unknown BOSS metric {metric!r}; choose one of {BOSS_METRICS}")
    knots = candidate_knots(candidates)
    n1 = len(knots)
    if trajectory.shape[0] != n1:
        raise ValueError(
            f"trajectory has {trajectory.shape[0]} states but there are {n1} candidates"
        )
    batch = trajectory.shape[1]
    s = torch.tensor(knots, dtype=torch.float64, device=trajectory.device)
    step = max(1, chunk or 1)
    velocities = []
    with torch.no_grad():
        for start in range(0, n1 - 1, step):  # the last candidate (t = 1) starts no step
            stop = min(start + step, n1 - 1)
            x = trajectory[start:stop].flatten(0, 1)
            t = s[start:stop].repeat_interleave(batch).to(trajectory.dtype)
            v = velocity(t, x).reshape(stop - start, *trajectory.shape[1:])
            velocities.append(v)
    vel = torch.cat(velocities).to(torch.float64)
    states = trajectory.to(torch.float64).flatten(2)  # (N+1, B, D)
    vel = vel.flatten(2)
    costs = torch.full((n1, n1), math.inf, dtype=torch.float64, device=trajectory.device)
    for i in range(n1 - 1):
        widths = (s[i + 1 :] - s[i])[:, None, None]  # (N−i, 1, 1)
        residual = states[i + 1 :] - states[i] - widths * vel[i]  # (N−i, B, D)
        if metric == "l2":
            costs[i, i + 1 :] = residual.norm(dim=-1).mean(dim=-1)
        else:
            costs[i, i + 1 :] = residual.square().mean(dim=(-1, -2))
    return costs


def bellman_path(costs: Tensor, num_steps: int) -> tuple[list[int], float]:
    """The K-step path 0 → N of least total cost, by dynamic programming (exact).

    ``V_k(j) = min_{i<j} V_{k−1}(i) + c(i, j)`` with V_0 = 0 at 0 and ∞ elsewhere; the
    answer is V_K(N), traced back. Ties between predecessors go to the smallest index i
    (``argmin``'s first minimum), so the result is deterministic.

    Args:
        costs: c(i, j), shape (N+1, N+1), ∞ where no step is allowed.
        num_steps: K, 1 ≤ K ≤ N.

    Returns:
        ``(indices, total)``: the K+1 candidate indices (0 first, N last) and the cost.
    """
    n1 = costs.shape[0]
    if costs.shape != (n1, n1) or n1 < 2:
        raise ValueError(f"costs must be square with N+1 >= 2 rows, got {tuple(costs.shape)}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if num_steps > n1 - 1:
        raise ValueError(
            f"K = {num_steps} steps need at least K + 1 candidates; there are {n1} "
            f"(N = {n1 - 1}): use more candidates"
        )
    c = costs.to(torch.float64)
    value = torch.full((n1,), math.inf, dtype=torch.float64, device=c.device)
    value[0] = 0.0
    parents = []
    for _ in range(num_steps):
        total = value[:, None] + c  # (i, j): reach i, then step i → j
        value, parent = total.min(dim=0)
        parents.append(parent)
    best = float(value[-1])
    if not math.isfinite(best):
        raise ValueError("no finite K-step path from 0 to 1 in the cost matrix")
    path = [n1 - 1]
    for parent in reversed(parents):
        path.append(int(parent[path[-1]]))
    path.reverse()
    return path, best


def path_cost(costs: Tensor, indices: list[int]) -> float:
    """Σ_k c(i_k, i_{k+1}) of a candidate path."""
    return float(sum(costs[a, b] for a, b in zip(indices[:-1], indices[1:], strict=True)))


def brute_force_path(costs: Tensor, num_steps: int) -> tuple[list[int], float]:
    """The optimal K-step path by enumerating every choice of K−1 interior candidates.

    For checking :func:`bellman_path` on small N (C(N−1, K−1) paths). Ties go to the first
    path in lexicographic order.
    """
    n = costs.shape[0] - 1
    best: tuple[list[int], float] | None = None
    for inner in itertools.combinations(range(1, n), num_steps - 1):
        path = [0, *inner, n]
        cost = path_cost(costs, path)
        if best is None or cost < best[1]:
            best = (path, cost)
    if best is None:
        raise ValueError(f"no {num_steps}-step path over {n + 1} candidates")
    return best


def uniform_indices(knots: list[float], num_steps: int) -> list[int] | None:
    """The candidate indices of the uniform K-step grid, or None if some k/K is missing."""
    where = {k: i for i, k in enumerate(knots)}
    indices = [where.get(k / num_steps) for k in range(num_steps)] + [len(knots) - 1]
    return None if any(i is None for i in indices) else indices  # type: ignore[return-value]


@dataclass(frozen=True)
class BossResult:
    """What :func:`bellman_grid` found.

    Attributes:
        grid: The chosen K-step grid.
        cost: Its total cost Σ_k c(τ_k, τ_{k+1}).
        optimal_cost: The DP optimum (equal to ``cost`` unless the tie-break chose uniform).
        uniform_cost: The uniform K-step grid's total cost (None when k/K are not all
            candidates).
        indices: The chosen candidate indices, shape K+1.
        candidates: The candidate times s_0 … s_N.
        costs: The cost matrix c(i, j), (N+1, N+1), float64 (∞ for i ≥ j).
    """

    grid: TimeGrid
    cost: float
    optimal_cost: float
    uniform_cost: float | None
    indices: tuple[int, ...]
    candidates: tuple[float, ...]
    costs: Tensor

    def to_dict(self) -> dict[str, object]:
        """Plain data (JSON) without the cost matrix."""
        return {
            "knots": self.grid.to_list(),
            "cost": self.cost,
            "optimal_cost": self.optimal_cost,
            "uniform_cost": self.uniform_cost,
            "indices": list(self.indices),
            "num_candidates": len(self.candidates) - 1,
        }


def bellman_grid(
    velocity: VelocityFn,
    x0: Tensor,
    num_steps: int,
    candidates: Steps = 100,
    *,
    substeps: int = 1,
    method: str = "euler",
    metric: Metric = "l2",
    prefer_uniform: bool = True,
    tie_rtol: float = 1e-6,
    trajectory: Tensor | None = None,
    costs: Tensor | None = None,
    chunk: int | None = None,
) -> BossResult:
    """BOSS's K-step grid for ``velocity``: reference trajectories, costs, Bellman DP.

    Tie-break: with ``prefer_uniform`` the uniform grid is returned whenever its total cost
    is within ``tie_rtol · (1 + scale)`` of the DP optimum, where ``scale`` is the mean
    norm of the reference displacement x(1) − x(0) times K (so a straight flow, whose
    costs are all zero up to rounding, keeps the uniform grid).

    Args:
        velocity: Velocity field (conditioning closed over).
        x0: Starting noises, shape (B, ...) (the more, the better the expectation).
        num_steps: K.
        candidates: N (uniform candidates i/N) or a candidate
            :class:`~flowrl.flow.times.TimeGrid`.
        substeps: Reference integration steps per candidate interval.
        method: Reference integrator.
        metric: ``"l2"`` (local truncation error norm) or ``"mse"``.
        prefer_uniform: The tie-break above.
        tie_rtol: Its tolerance.
        trajectory: Precomputed :func:`reference_trajectory` (reuse across K).
        costs: Precomputed :func:`local_error_costs` (reuse across K).
        chunk: Candidates evaluated per velocity call.

    Returns:
        :class:`BossResult`.
    """
    knots = candidate_knots(candidates)
    if costs is None:
        if trajectory is None:
            trajectory = reference_trajectory(
                velocity, x0, candidates, substeps=substeps, method=method
            )
        costs = local_error_costs(velocity, trajectory, candidates, metric=metric, chunk=chunk)
    path, best = bellman_path(costs, num_steps)
    uniform = uniform_indices(knots, num_steps)
    uniform_cost = None if uniform is None else path_cost(costs, uniform)
    chosen, cost = path, best
    if prefer_uniform and uniform is not None and uniform_cost is not None:
        if trajectory is not None:
            disp = (trajectory[-1] - trajectory[0]).flatten(1).to(torch.float64).norm(dim=-1)
            scale = num_steps * float(disp.mean())
        else:
            scale = 0.0
        if uniform_cost <= best + tie_rtol * (1.0 + scale):
            chosen, cost = uniform, uniform_cost
    grid = TimeGrid(tuple(knots[i] for i in chosen))
    return BossResult(
        grid=grid,
        cost=cost,
        optimal_cost=best,
        uniform_cost=uniform_cost,
        indices=tuple(chosen),
        candidates=tuple(knots),
        costs=costs,
    )


def straightening_loss(
    velocity: VelocityFn,
    start: Tensor,
    end: Tensor,
    t: Tensor,
    dt: Tensor,
    *,
    target: Literal["velocity", "displacement"] = "velocity",
) -> Tensor:
    """BOSS's straightening objective for one Euler step per row.

    The trained field should take reference state x(τ_k) to x(τ_{k+1}) in one Euler step:
    ``"velocity"`` regresses v(τ_k, x(τ_k)) on (x(τ_{k+1}) − x(τ_k))/Δτ_k (the reflow-style
    velocity target, every step weighted alike); ``"displacement"`` penalizes the local
    error x(τ_k) + Δτ_k·v − x(τ_{k+1}) itself (Δτ_k² times the former, the quantity the
    cost matrix measures).

    Args:
        velocity: The trained velocity field.
        start: x(τ_k), shape (B, ...).
        end: x(τ_{k+1}), shape (B, ...).
        t: τ_k, shape (B,).
        dt: Δτ_k, shape (B,), positive.
        target: ``"velocity"`` or ``"displacement"``.

    Returns:
        Scalar: the batch mean of the per-row mean squared error.
    """
    if target not in ("velocity", "displacement"):
        raise ValueError(f"unknown target {target!r}; choose 'velocity' or 'displacement'")
    v = velocity(t, start)
    width = expand_time(dt, start)
    error = v - (end - start) / width if target == "velocity" else start + width * v - end
    return error.square().flatten(1).mean(dim=1).mean()
