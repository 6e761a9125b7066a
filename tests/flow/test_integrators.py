import math

import pytest
import torch

from flowrl.flow import integrators as I
from flowrl.flow.times import time_grid

B, D = 8, 3
KS = [1, 2, 4, 8]


@pytest.fixture(autouse=True)
def _float64(float64):
    # Finite differences and exactness checks need double precision.
    return


def _x0(seed=0):
    return torch.randn(B, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", I.METHODS)
@pytest.mark.parametrize("K", KS)
def test_all_methods_exact_for_constant_velocity(method, K):
    c = torch.tensor([0.5, -2.0, 3.0])
    x1 = I.integrate(lambda t, x: c.expand_as(x), _x0(), K, method)
    torch.testing.assert_close(x1, _x0() + c, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["midpoint", "heun"])
@pytest.mark.parametrize("K", KS)
def test_second_order_methods_exact_for_velocity_affine_in_t(method, K):
    # v = a + b·t integrates to x1 = x0 + a + b/2 over [0, 1].
    a, b = torch.tensor([1.0, -0.5, 0.2]), torch.tensor([2.0, 4.0, -3.0])
    x1 = I.integrate(lambda t, x: a + b * t[:, None], _x0(), K, method)
    torch.testing.assert_close(x1, _x0() + a + b / 2, rtol=0, atol=1e-12)


@pytest.mark.parametrize("K", KS)
def test_euler_on_affine_velocity_samples_the_left_grid_points(K):
    # Euler sums v at t_k = k/K: Σ_k (a + b·k/K)/K = a + b·(K − 1)/(2K). This pins the
    # grid: a midpoint or right-endpoint grid would give a different number.
    a, b = 1.0, 2.0
    x1 = I.integrate(lambda t, x: (a + b * t[:, None]).expand_as(x), _x0(), K, "euler")
    torch.testing.assert_close(x1, _x0() + a + b * (K - 1) / (2 * K), rtol=0, atol=1e-12)


@pytest.mark.parametrize("K", KS)
def test_euler_on_linear_ode_is_the_discrete_map(K):
    lam = -1.3
    x1 = I.integrate(lambda t, x: lam * x, _x0(), K, "euler")
    torch.testing.assert_close(x1, _x0() * (1 + lam / K) ** K, rtol=1e-12, atol=0)


def test_second_order_converges_faster_than_euler():
    lam = 1.0
    exact = _x0() * math.e
    err = {
        m: (I.integrate(lambda t, x: lam * x, _x0(), 16, m) - exact).abs().max() for m in I.METHODS
    }
    assert err["midpoint"] < err["euler"] / 10
    assert err["heun"] < err["euler"] / 10


def test_trajectory_shape_and_endpoints():
    traj = I.integrate(lambda t, x: torch.ones_like(x), _x0(), 4, "heun", return_trajectory=True)
    assert traj.shape == (B, 5, D)
    torch.testing.assert_close(traj[:, 0], _x0())
    torch.testing.assert_close(traj[:, -1], _x0() + 1)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown integrator"):
        I.integrate(lambda t, x: x, _x0(), 2, "rk4")


# ------------------------------------------------------------------ noisy chain


def _velocity(t, x):
    # Strongly time-dependent, nonlinear: any grid mismatch changes the means.
    return torch.sin(3 * t)[:, None] * x + torch.cos(5 * t)[:, None] - 0.3 * x**2


def _std(t, x):
    # Depends on t and x, like a learned noise head, and stays positive.
    return 0.05 + 0.2 * torch.sigmoid(x + 4 * t[:, None])


def test_gaussian_log_prob_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    x, mean = torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)
    std = torch.rand(B, D, generator=g) + 0.1
    expected = torch.distributions.Normal(mean, std).log_prob(x).sum(-1)
    torch.testing.assert_close(I.gaussian_log_prob(x, mean, std), expected)


@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("include_initial", [True, False])
def test_chain_log_prob_equals_sampler_and_independent_computation(K, include_initial):
    out = I.sample_noisy_chain(
        _velocity,
        _std,
        _x0(),
        K,
        include_initial=include_initial,
        generator=torch.Generator().manual_seed(2),
    )
    assert out.chain.shape == (B, K + 1, D)
    replay = I.noisy_chain_log_prob(_velocity, _std, out.chain, include_initial=include_initial)
    torch.testing.assert_close(replay, out.log_prob, rtol=0, atol=1e-10)
    # Independent computation with torch.distributions on the grid t_k = k/K.
    total = torch.distributions.Normal(0.0, 1.0).log_prob(out.chain[:, 0]).sum(-1)
    total = total if include_initial else torch.zeros(B)
    for k in range(K):
        t = torch.full((B,), k / K)
        a = out.chain[:, k]
        step = torch.distributions.Normal(a + _velocity(t, a) / K, _std(t, a))
        total = total + step.log_prob(out.chain[:, k + 1]).sum(-1)
    torch.testing.assert_close(out.log_prob, total, rtol=0, atol=1e-10)


@pytest.mark.parametrize("K", KS)
def test_standardised_residuals_are_standard_normal(K):
    # Catches a sampler that draws from a different Gaussian than the likelihood scores.
    n = 20_000
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(3))
    chain = I.sample_noisy_chain(
        _velocity, _std, x0, K, generator=torch.Generator().manual_seed(4)
    ).chain
    ts, dts = time_grid(K)
    z = []
    for k in range(K):
        mean, std = I.noisy_euler_transition(_velocity, _std, chain[:, k], ts[k], dts[k])
        z.append((chain[:, k + 1] - mean) / std)
    z = torch.cat(z)
    assert abs(z.mean().item()) < 0.02
    assert abs(z.var().item() - 1.0) < 0.03


@pytest.mark.parametrize("K", KS)
def test_noisy_chain_mean_path_is_the_euler_ode(K):
    # With vanishing noise the chain is the deterministic Euler trajectory on THE grid.
    chain = I.sample_noisy_chain(
        _velocity,
        lambda t, x: torch.full_like(x, 1e-300),
        _x0(),
        K,
        generator=torch.Generator().manual_seed(5),
    ).chain
    ode = I.integrate(_velocity, _x0(), K, "euler", return_trajectory=True)
    torch.testing.assert_close(chain, ode, rtol=0, atol=1e-12)


def test_chain_log_prob_rejects_bad_shape():
    with pytest.raises(ValueError, match="chain"):
        I.noisy_chain_log_prob(_velocity, _std, torch.zeros(B, D))


@pytest.mark.parametrize("K", KS)
def test_fused_chain_log_prob_equals_the_step_loop(K):
    # Conditioning per row (B, 1), repeated step-major for the fused call on K·B rows.
    cond = torch.randn(B, 1, generator=torch.Generator().manual_seed(6))
    rep = cond.repeat(K, 1)

    def velocity(c):
        return lambda t, x: _velocity(t, x) + c

    def std(c):
        return lambda t, x: _std(t, x) * torch.sigmoid(c)

    out = I.sample_noisy_chain(
        velocity(cond), std(cond), _x0(), K, generator=torch.Generator().manual_seed(7)
    )
    fused = I.noisy_chain_log_prob(velocity(rep), std(rep), out.chain, fused=True)
    torch.testing.assert_close(fused, out.log_prob, rtol=0, atol=1e-10)
