"""TimeGrid (a value of THE grid) and BOSS (Bellman-optimal step sizes, arXiv 2312.16414)."""

import json
import math

import numpy as np
import pytest
import torch
from learner_helpers import update

from flowrl.algos import ReinFlow
from flowrl.flow import integrate, noisy_chain_log_prob, sample_noisy_chain
from flowrl.flow.boss import (
    bellman_grid,
    bellman_path,
    brute_force_path,
    local_error_costs,
    path_cost,
    reference_trajectory,
    straightening_loss,
)
from flowrl.flow.times import TimeGrid, as_steps, num_steps_of, steps_to_plain, time_grid
from flowrl.policies import FlowPolicy
from flowrl.policies.flow_actor import FlowActor, FlowActorConfig

BOSS_KNOTS = (0.0, 0.1, 0.35, 0.7, 1.0)

# ---------------------------------------------------------------------- TimeGrid


@pytest.mark.parametrize(
    ("knots", "match"),
    [
        ((0.0,), "K \\+ 1 >= 2"),
        ((), "K \\+ 1 >= 2"),
        ((0.1, 1.0), "exactly 0.0"),
        ((0.0, 0.5, 0.999), "exactly 1.0"),
        ((0.0, 0.5, 0.5, 1.0), "strictly increasing"),
        ((0.0, 0.6, 0.4, 1.0), "strictly increasing"),
        ((0.0, math.nan, 1.0), "finite"),
        ((0.0, math.inf, 1.0), "finite"),
        (("a", 1.0), "sequence of floats"),
    ],
)
def test_time_grid_validation(knots, match):
    with pytest.raises(ValueError, match=match):
        TimeGrid(knots)


def test_time_grid_round_trip_and_plain_data():
    grid = TimeGrid(BOSS_KNOTS)
    assert grid.num_steps == 4 and not grid.is_uniform
    plain = grid.to_list()
    assert all(type(k) is float for k in plain)
    assert TimeGrid.from_list(json.loads(json.dumps(plain))) == grid
    assert as_steps(plain) == grid and as_steps(grid) is grid and as_steps(3) == 3
    assert steps_to_plain(grid) == plain and steps_to_plain(5) == 5
    assert num_steps_of(grid) == 4 and num_steps_of(7) == 7
    assert sum(grid.step_sizes) == pytest.approx(1.0)
    assert TimeGrid.uniform(4).is_uniform and TimeGrid.uniform(4).num_steps == 4
    with pytest.raises(ValueError, match="positive int"):
        TimeGrid.uniform(0)
    for bad in (0, -1, 2.0, True, None):
        with pytest.raises(ValueError, match="positive int or a TimeGrid"):
            time_grid(bad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_time_grid_int_is_bit_identical_to_before(dtype):
    for K in range(1, 33):
        t, dt = time_grid(K, dtype=dtype)
        # The original definition, written out.
        assert torch.equal(t, torch.arange(K, dtype=dtype) / K)
        assert torch.equal(dt, torch.full((K,), 1.0 / K, dtype=dtype))
        tu, dtu = time_grid(TimeGrid.uniform(K), dtype=dtype)
        assert torch.equal(tu, t) and torch.equal(dtu, dt)


def test_non_uniform_time_grid_steps():
    t, dt = time_grid(TimeGrid(BOSS_KNOTS), dtype=torch.float64)
    assert torch.equal(t, torch.tensor(BOSS_KNOTS[:-1], dtype=torch.float64))
    torch.testing.assert_close(t + dt, torch.tensor(BOSS_KNOTS[1:], dtype=torch.float64))
    assert float(dt.sum()) == pytest.approx(1.0, abs=1e-15)


def test_integrators_walk_a_time_grid():
    grid = TimeGrid(BOSS_KNOTS)
    x0 = torch.randn(5, 3, dtype=torch.float64)
    # Euler is exact for a constant velocity on any grid.
    out = integrate(lambda t, x: torch.ones_like(x) * 2.0, x0, grid)
    torch.testing.assert_close(out, x0 + 2.0)
    # v = 2t: Euler sums 2·τ_k·Δτ_k; midpoint is exact (= 1).
    euler = integrate(lambda t, x: 2 * t[:, None].expand_as(x), x0, grid)
    expected = sum(2 * a * (b - a) for a, b in zip(BOSS_KNOTS[:-1], BOSS_KNOTS[1:], strict=True))
    torch.testing.assert_close(euler, x0 + expected)
    midpoint = integrate(lambda t, x: 2 * t[:, None].expand_as(x), x0, grid, "midpoint")
    torch.testing.assert_close(midpoint, x0 + 1.0)
    traj = integrate(lambda t, x: torch.ones_like(x), x0, grid, return_trajectory=True)
    assert traj.shape == (5, 5, 3)


def test_noisy_chain_on_a_grid_matches_an_independent_gaussian_computation():
    grid = TimeGrid(BOSS_KNOTS)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 2, generator=gen, dtype=torch.float64)

    def velocity(t, x):
        return -x * (1 + t[:, None]) + 0.3

    def std(t, x):
        return (0.1 + 0.2 * t[:, None]).expand_as(x)

    sampled = sample_noisy_chain(velocity, std, x0, grid, generator=gen)
    chain = sampled.chain
    manual = torch.zeros(6, dtype=torch.float64)
    manual += (-0.5 * x0.square() - 0.5 * math.log(2 * math.pi)).sum(-1)
    for k in range(4):
        a, b = BOSS_KNOTS[k], BOSS_KNOTS[k + 1]
        x = chain[:, k]
        mean = x + (-x * (1 + a) + 0.3) * (b - a)
        sigma = 0.1 + 0.2 * a
        z = (chain[:, k + 1] - mean) / sigma
        manual += (-0.5 * z.square() - math.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(-1)
    torch.testing.assert_close(sampled.log_prob, manual, rtol=0, atol=1e-10)
    for fused in (False, True):
        scored = noisy_chain_log_prob(velocity, std, chain, fused=fused, steps=grid)
        torch.testing.assert_close(scored, manual, rtol=0, atol=1e-10)
    # Scoring on the uniform grid (the default) differs: the grid must be passed.
    uniform = noisy_chain_log_prob(velocity, std, chain)
    assert not torch.allclose(uniform, manual)
    with pytest.raises(ValueError, match="K = 4 steps"):
        noisy_chain_log_prob(velocity, std, chain, steps=3)


# ---------------------------------------------------------------------- BOSS


def _gaussian_velocity(m: float, s: float):
    """Exact marginal velocity of the linear path N(0, 1) → N(m, s²), independent coupling.

    x_t ~ N(t·m, σ_t²), σ_t² = (1 − t)² + t²s²; v = m + (t·s² − (1 − t))/σ_t²·(x − t·m), and
    the trajectory from x0 is x(t) = t·m + σ_t·x0 (so x(1) = m + s·x0).
    """

    def velocity(t, x):
        tt = t.reshape(-1, *([1] * (x.dim() - 1)))
        var = (1 - tt) ** 2 + tt**2 * s**2
        return m + (tt * s**2 - (1 - tt)) / var * (x - tt * m)

    return velocity


def test_straight_flows_keep_the_uniform_grid():
    x0 = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def constant(t, x):
        return torch.ones_like(x) * 0.7

    def point_mass(t, x):  # N(0, I) → δ_target: straight, singular only at t = 1
        return (target - x) / (1 - t[:, None])

    for velocity in (constant, point_mass):
        for K in (1, 2, 4, 5):
            result = bellman_grid(velocity, x0, K, 20)
            assert result.grid == TimeGrid.uniform(K)
            assert result.optimal_cost < 1e-12 and result.cost < 1e-12
            assert result.grid.num_steps == K


def test_without_the_tie_break_a_straight_flow_still_gives_a_valid_grid():
    x0 = torch.randn(8, 2, dtype=torch.float64)
    result = bellman_grid(lambda t, x: torch.ones_like(x), x0, 3, 10, prefer_uniform=False)
    knots = result.grid.knots
    assert knots[0] == 0.0 and knots[-1] == 1.0 and len(knots) == 4
    assert all(a < b for a, b in zip(knots[:-1], knots[1:], strict=True))


@pytest.mark.parametrize("s", [0.1, 4.0])
def test_boss_grid_beats_uniform_on_a_curved_gaussian_flow(s):
    m = 1.5
    velocity = _gaussian_velocity(m, s)
    x0 = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = m + s * x0
    trajectory = reference_trajectory(velocity, x0, 60, substeps=10, method="heun")
    torch.testing.assert_close(trajectory[-1], exact, atol=1e-4, rtol=0)
    costs = local_error_costs(velocity, trajectory, 60)
    for K in (2, 3, 4, 6):
        result = bellman_grid(velocity, x0, K, 60, trajectory=trajectory, costs=costs)
        grid = result.grid
        assert grid.num_steps == K and grid.knots[0] == 0.0 and grid.knots[-1] == 1.0
        assert result.cost <= result.uniform_cost
        boss = (integrate(velocity, x0, grid) - exact).norm(dim=-1).mean()
        uniform = (integrate(velocity, x0, K) - exact).norm(dim=-1).mean()
        assert boss < uniform, (K, float(boss), float(uniform), grid)


def test_bellman_dp_is_exactly_optimal_against_brute_force():
    velocity = _gaussian_velocity(1.0, 0.2)
    x0 = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    trajectory = reference_trajectory(velocity, x0, 12, substeps=10)
    for metric in ("l2", "mse"):
        costs = local_error_costs(velocity, trajectory, 12, metric=metric)
        for K in range(1, 7):
            path, cost = bellman_path(costs, K)
            brute, brute_cost = brute_force_path(costs, K)
            assert cost == pytest.approx(brute_cost, rel=1e-12)
            assert path == brute and path_cost(costs, path) == pytest.approx(cost, rel=1e-12)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):  # random cost matrices (ties have probability 0)
        costs = torch.rand(10, 10, generator=gen, dtype=torch.float64)
        costs = torch.where(torch.ones(10, 10).triu(1).bool(), costs, math.inf)
        for K in range(1, 10):
            path, cost = bellman_path(costs, K)
            assert (path, pytest.approx(cost, rel=1e-12)) == brute_force_path(costs, K)


def test_bellman_path_errors():
    costs = torch.full((4, 4), math.inf, dtype=torch.float64).triu(1).nan_to_num(0.0)
    with pytest.raises(ValueError, match="at least K \\+ 1 candidates"):
        bellman_path(costs, 4)
    with pytest.raises(ValueError, match="positive int"):
        bellman_path(costs, 0)


def test_boss_on_a_candidate_time_grid():
    velocity = _gaussian_velocity(0.5, 0.3)
    x0 = torch.randn(32, 1, dtype=torch.float64)
    candidates = TimeGrid((0.0, 0.2, 0.5, 0.6, 0.8, 0.9, 1.0))
    result = bellman_grid(velocity, x0, 3, candidates, substeps=5)
    assert set(result.grid.knots) <= set(candidates.knots)
    assert result.uniform_cost is None  # 1/3 is not a candidate


def test_straightening_loss_is_zero_on_a_straight_reference():
    x0 = torch.randn(16, 2)
    end = x0 + 0.25 * 3.0
    t, dt = torch.full((16,), 0.25), torch.full((16,), 0.25)
    for target in ("velocity", "displacement"):
        loss = straightening_loss(
            lambda tt, x: torch.full_like(x, 3.0), x0, end, t, dt, target=target
        )
        assert float(loss) == pytest.approx(0.0, abs=1e-10)
    loss_v = straightening_loss(lambda tt, x: torch.zeros_like(x), x0, end, t, dt)
    loss_d = straightening_loss(
        lambda tt, x: torch.zeros_like(x), x0, end, t, dt, target="displacement"
    )
    assert float(loss_v) == pytest.approx(9.0) and float(loss_d) == pytest.approx(9.0 / 16)


# ---------------------------------------------------------------------- policies on a grid


def _spaces():
    from gymnasium import spaces

    obs = spaces.Box(-np.inf, np.inf, (3,), np.float32)
    act = spaces.Box(-2.0, 2.0, (2,), np.float32)
    return obs, act


def test_shortcut_actor_refuses_a_non_uniform_grid():
    actor = FlowActor(FlowActorConfig(obs_dim=3, action_dim=2, width=16, depth=1, shortcut=True))
    obs = torch.randn(4, 3)
    with pytest.raises(ValueError, match="non-uniform grid"):
        actor.sample(obs, TimeGrid(BOSS_KNOTS))
    assert actor.sample(obs, TimeGrid.uniform(4)).shape == (4, 2)
    with pytest.raises(ValueError, match="not a step count"):
        actor.sample(obs, TimeGrid.uniform(3))
    observation_space, action_space = _spaces()
    with pytest.raises(ValueError, match="non-uniform grid"):
        FlowPolicy.from_pretrained(
            actor, observation_space, action_space, num_steps=TimeGrid(BOSS_KNOTS)
        )


def test_plain_actor_samples_on_a_grid():
    torch.manual_seed(0)
    actor = FlowActor(FlowActorConfig(obs_dim=3, action_dim=2, width=16, depth=1))
    obs, noise = torch.randn(4, 3), torch.randn(4, 2)
    grid = TimeGrid(BOSS_KNOTS)
    out = actor.sample_normalized(obs, grid, noise=noise)
    obs_n = actor.normalize_obs(obs)
    expected = integrate(lambda t, x: actor.velocity(t, x, obs_n), noise, grid)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # A knot list (as stored) is read as the grid.
    torch.testing.assert_close(actor.sample_normalized(obs, list(BOSS_KNOTS), noise=noise), out)


def test_flow_policy_on_a_time_grid_chain_likelihood_and_round_trip():
    torch.manual_seed(0)
    observation_space, action_space = _spaces()
    grid = TimeGrid(BOSS_KNOTS)
    policy = FlowPolicy(
        observation_space,
        action_space,
        lambda _: 1e-3,
        actor_config=dict(width=16, depth=1),
        num_steps=grid,
        initial_std=0.5,
    )
    assert policy.grid == grid and policy.num_steps == 4
    obs = torch.randn(7, 3)
    with torch.no_grad():
        sampled = policy.sample(obs, torch.Generator().manual_seed(1))
        chain = sampled.chain
        assert chain.shape == (7, 5, 2)
        torch.testing.assert_close(
            policy.log_prob_chain(obs, chain), sampled.log_prob, rtol=0, atol=1e-9
        )
        # Independent per-step Gaussians on the knots (not through time_grid).
        obs_n = policy.actor.normalize_obs(obs)
        manual = (
            (-0.5 * (chain[:, 0] / 0.5).square() - math.log(0.5) - 0.5 * math.log(2 * math.pi))
            .double()
            .sum(-1)
        )
        for k in range(4):
            a, b = BOSS_KNOTS[k], BOSS_KNOTS[k + 1]
            t = torch.full((7,), a)
            mean = chain[:, k] + policy.actor.velocity(t, chain[:, k], obs_n) * (b - a)
            sigma = policy.sigma(t, obs_n)
            z = ((chain[:, k + 1] - mean) / sigma).double()
            manual += (-0.5 * z.square() - sigma.double().log() - 0.5 * math.log(2 * math.pi)).sum(
                -1
            )
        torch.testing.assert_close(sampled.log_prob, manual, rtol=0, atol=1e-4)
        # The deterministic ODE walks the grid too.
        ode = policy.sample_chain(obs, deterministic=True)
        expected = integrate(
            policy.actor.velocity_fn(obs_n, grid), torch.zeros(7, 2), grid, return_trajectory=True
        )
        torch.testing.assert_close(ode, expected, rtol=0, atol=0)
    params = policy._get_constructor_parameters()
    assert params["num_steps"] == list(BOSS_KNOTS)
    json.dumps(params["num_steps"])
    params.pop("observation_space"), params.pop("action_space"), params.pop("lr_schedule")
    rebuilt = FlowPolicy(observation_space, action_space, lambda _: 1e-3, **params)
    rebuilt.load_state_dict(policy.state_dict())
    assert rebuilt.grid == grid
    with torch.no_grad():
        torch.testing.assert_close(
            rebuilt.log_prob_chain(obs, chain), sampled.log_prob, rtol=0, atol=0
        )


def test_diffusion_policy_refuses_a_non_uniform_grid():
    from flowrl.policies import DiffusionPolicy

    observation_space, action_space = _spaces()
    with pytest.raises(ValueError, match="non-uniform grid"):
        DiffusionPolicy(
            observation_space,
            action_space,
            lambda _: 1e-3,
            actor_config=dict(width=16, depth=1),
            num_steps=TimeGrid(BOSS_KNOTS),
        )


@pytest.mark.parametrize("initial_std", [0.0, 1.0])
def test_reinflow_ratio_is_one_on_fresh_data_with_a_boss_grid(tmp_path, initial_std):
    grid = TimeGrid(BOSS_KNOTS)
    model = ReinFlow(
        "FlowPolicy",
        "Pendulum-v1",
        n_steps=32,
        batch_size=16,
        n_epochs=2,
        seed=0,
        policy_kwargs=dict(
            num_steps=grid,
            actor_config=dict(width=32, depth=1),
            noise_hidden=(16,),
            value_hidden=(32,),
            initial_std=initial_std,
        ),
    )
    assert model.policy.grid == grid
    values = update(model)
    assert values["flow/ratio_first_minibatch"] == 1.0
    assert values["flow/ratio_first_minibatch_max_deviation"] == 0.0
    path = tmp_path / "model.zip"
    model.save(path)
    loaded = ReinFlow.load(path)
    assert loaded.policy.grid == grid and loaded.policy.num_steps == 4
    obs = torch.randn(5, 3)
    with torch.no_grad():
        a = model.policy.sample_chain(obs, deterministic=True)
        b = loaded.policy.sample_chain(obs, deterministic=True)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
