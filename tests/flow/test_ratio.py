"""PolicyFlow's maths (flowrl.flow.ratio), each against an independent computation."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from flowrl.flow import time_grid
from flowrl.flow.ratio import (
    brownian_residual,
    path_points,
    ratio_times,
    velocity_difference_log_ratio,
)


def _normal_log_prob(x, mean, std):
    """log N(x; mean, std²) summed over the last dim, by torch.distributions in float64."""
    return Normal(mean.double(), std.double()).log_prob(x.double()).sum(-1)


def test_path_points_are_the_straight_line_from_latent_to_endpoint():
    z = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    end = torch.tensor([[3.0, 2.0], [-0.5, 1.0]])
    t = torch.tensor([[0.0, 0.25, 1.0], [0.5, 0.5, 0.75]])
    x = path_points(z, end, t)
    assert x.shape == (2, 3, 2)
    # x_t = (1 - t) z + t φ̂₁, written out: row 0 at t = 0.25 is 0.75·(1, -2) + 0.25·(3, 2).
    torch.testing.assert_close(x[0, 1], torch.tensor([1.5, -1.0]))
    torch.testing.assert_close(x[0, 0], z[0])
    torch.testing.assert_close(x[0, 2], end[0])
    torch.testing.assert_close(x[1, 2], torch.tensor([-0.25, 0.75]))


def test_ratio_times():
    grid = ratio_times("grid", 3, 8, 4)
    assert grid.shape == (3, 4)
    torch.testing.assert_close(grid, time_grid(4)[0].expand(3, 4))
    paper = ratio_times("paper", 5, 7, 4, generator=torch.Generator().manual_seed(0))
    assert paper.shape == (5, 7) and (paper >= 0).all() and (paper < 1).all()
    with pytest.raises(ValueError, match="ratio estimator"):
        ratio_times("exact", 2, 4, 4)
    with pytest.raises(ValueError, match="num_times"):
        ratio_times("paper", 2, 0, 4)


@pytest.mark.parametrize("estimator", ["paper", "grid"])
def test_no_change_gives_ratio_one(estimator):
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(6, 3, generator=g)
    sigma = torch.rand(6, 3, generator=g) + 0.1
    log_ratio = velocity_difference_log_ratio(noise, torch.zeros(6, 5, 3), sigma, sigma, estimator)
    assert log_ratio.dtype == torch.float64
    assert log_ratio.abs().max() < 1e-12


def test_paper_estimator_is_the_mean_of_per_time_gaussian_ratios():
    g = torch.Generator().manual_seed(2)
    noise, delta = torch.randn(4, 2, generator=g), 0.3 * torch.randn(4, 5, 2, generator=g)
    sigma, old_sigma = torch.rand(4, 2, generator=g) + 0.2, torch.rand(4, 2, generator=g) + 0.2
    got = velocity_difference_log_ratio(noise, delta, sigma, old_sigma, "paper")
    for b in range(4):
        ratios = [
            math.exp(
                float(_normal_log_prob(noise[b], delta[b, j], sigma[b]))
                - float(_normal_log_prob(noise[b], torch.zeros(2), old_sigma[b]))
            )
            for j in range(5)
        ]
        assert float(got[b]) == pytest.approx(math.log(np.mean(ratios)), rel=1e-10, abs=1e-12)


def test_grid_estimator_is_the_gaussian_ratio_at_the_mean_difference():
    g = torch.Generator().manual_seed(3)
    noise, delta = torch.randn(4, 2, generator=g), 0.3 * torch.randn(4, 3, 2, generator=g)
    sigma, old_sigma = torch.rand(4, 2, generator=g) + 0.2, torch.rand(4, 2, generator=g) + 0.2
    got = velocity_difference_log_ratio(noise, delta, sigma, old_sigma, "grid")
    # Σ_k Δt_k δ_k with Δt_k = 1/3 on THE grid of K = 3 steps.
    dt = time_grid(3)[1]
    shift = (dt[None, :, None] * delta).sum(1)
    expected = _normal_log_prob(noise, shift, sigma) - _normal_log_prob(noise, 0 * noise, old_sigma)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_ratio_is_the_conditional_gaussian_ratio_when_the_difference_is_the_shift():
    # Shift invariance: N(a; φ̂ + Δ, σ²)/N(a; φ̂, σ̂²) = N(a − φ̂; Δ, σ²)/N(a − φ̂; 0, σ̂²).
    g = torch.Generator().manual_seed(4)
    endpoint, shift = torch.randn(5, 3, generator=g), 0.2 * torch.randn(5, 3, generator=g)
    sigma, old_sigma = torch.full((5, 3), 0.4), torch.full((5, 3), 0.5)
    action = endpoint + old_sigma * torch.randn(5, 3, generator=g)
    exact = _normal_log_prob(action, endpoint + shift, sigma) - _normal_log_prob(
        action, endpoint, old_sigma
    )
    constant = shift.unsqueeze(1).expand(5, 4, 3)  # δ(t) = Δ at every time
    for estimator in ("paper", "grid"):
        noise = action - endpoint
        got = velocity_difference_log_ratio(noise, constant, sigma, old_sigma, estimator)
        torch.testing.assert_close(got, exact, rtol=1e-6, atol=1e-6)


def test_bad_delta_shape():
    with pytest.raises(ValueError, match=r"\(B, J, Da\)"):
        velocity_difference_log_ratio(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), 1)


def test_brownian_residual_on_a_constructed_velocity_field():
    # v(t, x) = A x + t·b and v̂(t, x) = B x (analytic fields); η by hand in numpy.
    rng = np.random.default_rng(0)
    A, Bm, b = rng.normal(size=(2, 2)), rng.normal(size=(2, 2)), rng.normal(size=2)
    t = rng.uniform(size=7)
    x = rng.normal(size=(7, 2))
    v = x @ A.T + t[:, None] * b
    v_old = x @ Bm.T
    expected = np.stack(
        [(1 - t[i]) * v[i] - (x[i] - t[i] * v_old[i]) for i in range(7)]
    )  # η = (1 − t)·v_θ − (x_t − t·v̂)
    got = brownian_residual(*(torch.from_numpy(a) for a in (t, x, v, v_old)))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_brownian_residual_vanishes_where_the_velocity_is_the_latent_direction():
    # (1 − t)·v = x_t − t·v̂ makes η = 0: on the straight path with v̂ = φ̂₁ − z, the minimizer
    # is v = z / (1 − t), the latent's direction.
    z, end = torch.tensor([[1.0, -1.0]]), torch.tensor([[3.0, 0.5]])
    t = torch.tensor([0.3])
    x = path_points(z, end, t[:, None])[:, 0]
    eta = brownian_residual(t, x, z / (1 - t), end - z)
    torch.testing.assert_close(eta, torch.zeros_like(eta))
