"""The diffusion maths in flowrl's time: cosine schedule, DDPM posterior, DDIM(η) step."""

import math

import numpy as np
import pytest
import torch

from flowrl.flow.diffusion import (
    cosine_alpha_bar,
    ddpm_posterior,
    ddpm_schedule,
    denoising_step,
    diffusion_sample,
    epsilon_from_velocity,
    epsilon_loss,
)
from flowrl.flow.times import time_grid

KS = [1, 2, 4, 8]


def test_alpha_bar_rises_from_noise_to_data():
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    alpha_bar = cosine_alpha_bar(t)
    assert torch.all(alpha_bar[1:] > alpha_bar[:-1])  # strictly increasing in flowrl time
    assert alpha_bar[0] < 1e-30  # t = 0: pure noise
    assert alpha_bar[-1] == 1.0  # t = 1: data
    # A hand value: t = 0.5 is DDPM's noise fraction 0.5; s = 0.008.
    f = lambda tau: math.cos((tau + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert float(cosine_alpha_bar(torch.tensor(0.5, dtype=torch.float64))) == pytest.approx(
        f(0.5) / f(0.0), rel=1e-12
    )


@pytest.mark.parametrize("K", KS)
def test_schedule_is_the_official_cosine_schedule_on_the_grid(K):
    """DPPO's cosine_beta_schedule(K), recomputed here with numpy: its level i (noise
    fraction i/K) is flowrl's grid time 1 − i/K, and its betas are clipped at 0.999."""
    x = np.linspace(0, K + 1, K + 1)
    cumprod = np.cos(((x / (K + 1)) + 0.008) / 1.008 * np.pi * 0.5) ** 2
    cumprod = cumprod / cumprod[0]
    betas = np.clip(1 - cumprod[1:] / cumprod[:-1], 0, 0.999)
    levels = np.concatenate([[1.0], np.cumprod(1 - betas)])  # ᾱ at levels 0 (data) … K (noise)
    start, end = ddpm_schedule(K, dtype=torch.float64)
    # step k runs from level K − k to level K − k − 1
    np.testing.assert_allclose(start.numpy(), levels[K - np.arange(K)], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(end.numpy(), levels[K - 1 - np.arange(K)], rtol=1e-12, atol=1e-15)
    # the steps tile THE grid: each ends where the next starts, and the last ends at data
    torch.testing.assert_close(start[1:], end[:-1], rtol=1e-12, atol=0)
    assert float(end[-1]) == pytest.approx(1.0, abs=1e-12)
    assert float(start[0]) == pytest.approx(0.001 * float(end[0]), rel=1e-9)  # β clipped
    t, dt = time_grid(K, dtype=torch.float64)
    torch.testing.assert_close(end, cosine_alpha_bar(t + dt))


def test_ddpm_posterior_on_a_hand_case():
    """ᾱ_s = 0.5, ᾱ_u = 0.8, x1 = 1, x_s = 2. Bayes: x_u | x1 ~ N(√0.8, 0.2) and
    x_s | x_u ~ N(√α·x_u, 1 − α), α = 0.625, so the posterior precision is
    1/0.2 + 0.625/0.375 = 6.667 (variance 0.15) and its mean is
    0.15·(√0.8/0.2 + √0.625·2/0.375) = 1.303276."""
    mean, var = ddpm_posterior(torch.tensor([1.0]), torch.tensor([2.0]), 0.5, 0.8)
    assert float(var) == pytest.approx(0.15, rel=1e-6)
    assert float(mean) == pytest.approx(1.303276, rel=1e-6)
    precision = 1 / 0.2 + 0.625 / 0.375
    bayes_mean = (math.sqrt(0.8) / 0.2 + math.sqrt(0.625) * 2 / 0.375) / precision
    assert float(mean) == pytest.approx(bayes_mean, rel=1e-6)


@pytest.mark.parametrize("clip", [None, 1.0])
def test_eta_one_is_the_ddpm_posterior_at_the_data_prediction(clip):
    gen = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(64, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    ab_s, ab_u = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    mean, sigma, data_hat = denoising_step(x, eps, ab_s, ab_u, eta=1.0, clip=clip)
    expected_hat = (x - (1 - ab_s).sqrt() * eps) / ab_s.sqrt()
    if clip is not None:
        expected_hat = expected_hat.clamp(-clip, clip)
        assert (expected_hat.abs() == 1).any()  # the clamp is exercised
    torch.testing.assert_close(data_hat, expected_hat)
    post_mean, post_var = ddpm_posterior(expected_hat, x, ab_s, ab_u)
    torch.testing.assert_close(mean, post_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sigma.square(), post_var, rtol=1e-12, atol=1e-12)


def test_eta_zero_is_noiseless_and_moves_an_exact_state_along_its_noise():
    """DDIM's η = 0 step with the true noise lands on √ᾱ_u·x1 + √(1−ᾱ_u)·ε exactly."""
    gen = torch.Generator().manual_seed(1)
    x1 = 0.5 * torch.randn(16, 2, generator=gen, dtype=torch.float64).clamp(-1, 1)
    eps = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    ab_s, ab_u = torch.tensor(0.2, dtype=torch.float64), torch.tensor(0.9, dtype=torch.float64)
    x_s = ab_s.sqrt() * x1 + (1 - ab_s).sqrt() * eps
    mean, sigma, data_hat = denoising_step(x_s, eps, ab_s, ab_u, eta=0.0)
    assert float(sigma) == 0.0
    torch.testing.assert_close(data_hat, x1)
    torch.testing.assert_close(mean, ab_u.sqrt() * x1 + (1 - ab_u).sqrt() * eps)


@pytest.mark.parametrize("K", [2, 4, 8])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sampling_with_the_exact_noise_predictor_of_a_point_mass_returns_it(K, eta):
    """Data = c: ε̂(t, x) = (x − √ᾱ(t)·c)/√(1−ᾱ(t)) is exact from t_1 on, and the last
    step (ᾱ_u = 1, σ = 0) returns x̂1 = c whatever the chain did before."""
    c = torch.tensor([0.3, -0.7], dtype=torch.float64)

    def eps_fn(t, x):
        ab = cosine_alpha_bar(t)[:, None]
        return (x - ab.sqrt() * c) / (1 - ab).sqrt()

    gen = torch.Generator().manual_seed(K)
    x0 = torch.randn(32, 2, generator=gen, dtype=torch.float64)
    out = diffusion_sample(eps_fn, x0, K, eta=eta, clip=None, generator=gen)
    torch.testing.assert_close(out, c.expand_as(out), rtol=0, atol=1e-6)


def test_a_flow_velocity_gives_the_exact_noise_of_a_diffusion_state():
    """Point mass c: the linear path's velocity is v(τ, y) = (c − y)/(1 − τ); read through
    the path, it recovers the ε of x = √ᾱ·c + √(1−ᾱ)·ε exactly."""
    c = torch.tensor([0.4, -0.2, 0.9], dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    eps = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    alpha_bar = torch.rand(50, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    x = alpha_bar.sqrt()[:, None] * c + (1 - alpha_bar).sqrt()[:, None] * eps
    velocity = lambda tau, y: (c - y) / (1 - tau)[:, None]  # noqa: E731
    torch.testing.assert_close(epsilon_from_velocity(velocity, x, alpha_bar), eps)


def test_epsilon_loss_is_zero_for_the_exact_predictor_and_positive_otherwise():
    c = torch.tensor([0.5, -0.5])

    def exact(t, x):
        ab = cosine_alpha_bar(t)[:, None]
        return (x - ab.sqrt() * c) / (1 - ab).sqrt()

    gen = torch.Generator().manual_seed(3)
    data = c.expand(256, 2)
    t = 0.99 * torch.rand(256, generator=gen)
    noise = torch.randn(256, 2, generator=gen)
    assert float(epsilon_loss(exact, data, t, noise)) < 1e-8
    # predicting zero noise costs E‖ε‖² per dim = 1
    zero = epsilon_loss(lambda t, x: torch.zeros_like(x), data, t, noise)
    assert float(zero) == pytest.approx(float(noise.square().mean()), rel=1e-6)


def test_bad_max_beta_is_refused():
    with pytest.raises(ValueError, match="max_beta"):
        ddpm_schedule(4, max_beta=1.0)
