import math

import pytest
import torch

from flowrl.flow import paths


@pytest.fixture(autouse=True)
def _float64(float64):
    # Finite differences and exactness checks need double precision.
    return


B, D = 16, 3


def _data_noise(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)


def test_linear_path_endpoints_and_velocity():
    data, noise = _data_noise()
    ones, zeros = torch.ones(B), torch.zeros(B)
    torch.testing.assert_close(paths.linear_interpolate(noise, data, zeros), noise)
    torch.testing.assert_close(paths.linear_interpolate(noise, data, ones), data)
    t = torch.rand(B, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.05
    h = 1e-6
    fd = (
        paths.linear_interpolate(noise, data, t + h) - paths.linear_interpolate(noise, data, t - h)
    ) / (2 * h)
    sample = paths.linear_path_sample(noise, data, t)
    torch.testing.assert_close(sample.velocity, fd, rtol=1e-7, atol=1e-7)
    with pytest.raises(ValueError):
        paths.linear_path_sample(noise[:, :2], data, t)


def test_trig_path_endpoints_and_velocity():
    data, noise = _data_noise()
    sigma_d = 0.5
    s0, s1 = torch.zeros(B), torch.full((B,), math.pi / 2)
    torch.testing.assert_close(paths.trig_interpolate(data, noise, s0, sigma_d), data)
    torch.testing.assert_close(paths.trig_interpolate(data, noise, s1, sigma_d), sigma_d * noise)
    s = torch.rand(B, generator=torch.Generator().manual_seed(2)) * 1.4 + 0.05
    h = 1e-6
    fd = (
        paths.trig_interpolate(data, noise, s + h, sigma_d)
        - paths.trig_interpolate(data, noise, s - h, sigma_d)
    ) / (2 * h)
    torch.testing.assert_close(paths.trig_velocity(data, noise, s, sigma_d), fd)


@pytest.mark.parametrize("sigma_d", [0.5, 1.0, 2.0])
def test_time_maps_are_inverse_with_the_right_endpoints(sigma_d):
    t = torch.linspace(0.0, 1.0, 101)
    s = paths.linear_to_trig_time(t, sigma_d)
    torch.testing.assert_close(s[0], torch.tensor(math.pi / 2))  # noise
    torch.testing.assert_close(s[-1], torch.tensor(0.0))  # data
    torch.testing.assert_close(paths.trig_to_linear_time(s, sigma_d), t)
    assert torch.all(s[1:] < s[:-1])  # monotone: later linear time = closer to data


def test_sigma_d_one_matches_the_tan_formula():
    # DESIGN.md §6: for σ_d = 1, with σ = tan s, t = 1 / (1 + σ).
    s = torch.linspace(0.01, 1.5, 50)
    torch.testing.assert_close(paths.trig_to_linear_time(s), 1 / (1 + torch.tan(s)))


@pytest.mark.parametrize("sigma_d", [0.5, 1.0])
def test_positions_agree_on_the_same_pair(sigma_d):
    # The TrigFlow point of (data, ε) at s is c(s) times the linear point at t(s).
    data, noise = _data_noise(3)
    s = torch.rand(B, generator=torch.Generator().manual_seed(4)) * (math.pi / 2)
    t = paths.trig_to_linear_time(s, sigma_d)
    x_t = paths.linear_interpolate(noise, data, t)
    x_s = paths.trig_interpolate(data, noise, s, sigma_d)
    torch.testing.assert_close(paths.linear_to_trig_position(x_t, t, sigma_d), x_s)
    torch.testing.assert_close(paths.trig_to_linear_position(x_s, s, sigma_d), x_t)


@pytest.mark.parametrize("sigma_d", [0.5, 1.0])
def test_conditional_velocities_convert(sigma_d):
    data, noise = _data_noise(5)
    s = torch.rand(B, generator=torch.Generator().manual_seed(6)) * 1.5 + 0.03
    t = paths.trig_to_linear_time(s, sigma_d)
    x_t = paths.linear_interpolate(noise, data, t)
    x_s = paths.trig_interpolate(data, noise, s, sigma_d)
    u = data - noise
    dxds = paths.trig_velocity(data, noise, s, sigma_d)
    torch.testing.assert_close(paths.linear_to_trig_velocity(x_t, u, t, sigma_d), dxds)
    torch.testing.assert_close(paths.trig_to_linear_velocity(x_s, dxds, s, sigma_d), u)


@pytest.mark.parametrize("sigma_d", [0.5, 1.0, 1.7])
def test_velocity_map_holds_for_any_field_by_finite_differences(sigma_d):
    # A field that is not a conditional path: dx/dt = −x + sin t, solved in closed form,
    # x(t) = C·e^{−t} + (sin t − cos t)/2. Its TrigFlow image x_s = c(s)·x(t(s)) must have
    # d x_s / ds equal to linear_to_trig_velocity(x_t, v(t, x_t), t).
    C = torch.randn(B, D, generator=torch.Generator().manual_seed(7))

    def x_of_t(t):
        tt = t[:, None]
        return C * torch.exp(-tt) + (torch.sin(tt) - torch.cos(tt)) / 2

    def x_of_s(s):
        t = paths.trig_to_linear_time(s, sigma_d)
        return paths.linear_to_trig_position(x_of_t(t), t, sigma_d)

    s = torch.rand(B, generator=torch.Generator().manual_seed(8)) * 1.4 + 0.08
    h = 1e-6
    fd = (x_of_s(s + h) - x_of_s(s - h)) / (2 * h)
    t = paths.trig_to_linear_time(s, sigma_d)
    x_t = x_of_t(t)
    v = -x_t + torch.sin(t)[:, None]
    converted = paths.linear_to_trig_velocity(x_t, v, t, sigma_d)
    torch.testing.assert_close(converted, fd, rtol=1e-6, atol=1e-7)
    # And back again.
    x_s = paths.linear_to_trig_position(x_t, t, sigma_d)
    torch.testing.assert_close(paths.trig_to_linear_velocity(x_s, converted, s, sigma_d), v)


def test_expand_time_checks_batch():
    with pytest.raises(ValueError, match="batch"):
        paths.expand_time(torch.zeros(3), torch.zeros(4, 2))
    assert paths.expand_time(torch.zeros(4), torch.zeros(4, 2, 5)).shape == (4, 1, 1)
