"""The maths of teachers and students: guidance, TrigFlow wrapping, the sCM target, sampling."""

import copy
import math

import pytest
import torch
from torch import nn

from flowrl.flow.paths import linear_to_trig_time, trig_scale
from flowrl.generative.consistency import (
    TrigFlowWrapper,
    consistency_fn,
    consistency_sample,
    data_prediction,
    dmd_loss,
    guided_velocity,
    scd_loss,
    scd_target,
    teacher_loss,
)
from flowrl.generative.models import MLPGenerator


class GaussianTeacher(nn.Module):
    """Exact linear-path velocity for data ~ N(0, a² I): E[x1 − ε | x_t]."""

    def __init__(self, a):
        super().__init__()
        self.a = a

    def forward(self, x, t, y=None):
        t = t.reshape(-1, *[1] * (x.dim() - 1))
        return (t * self.a**2 - (1 - t)) / ((1 - t) ** 2 + t**2 * self.a**2) * x


class LinearF(nn.Module):
    """Analytic F(x_in, s) = α(s)·x_in + β(s), with α = cos s + ½, β = sin 2s."""

    sigma_d = 1.7

    def forward(self, x_in, s, y=None):
        s = s.reshape(-1, *[1] * (x_in.dim() - 1))
        return (torch.cos(s) + 0.5) * x_in + torch.sin(2 * s)


class PerfectGaussianStudent(nn.Module):
    """The exact consistency model for N(0, σ_d² I) data: f(x_s, s) = x_s."""

    def __init__(self, sigma_d):
        super().__init__()
        self.sigma_d = sigma_d

    def ode_velocity(self, x_s, s, y=None):
        return self.sigma_d * self(x_s / self.sigma_d, s, y)

    def forward(self, x_in, s, y=None):
        s = s.reshape(-1, *[1] * (x_in.dim() - 1))
        return (torch.cos(s) - 1) / torch.sin(s) * x_in


def test_scd_target_matches_closed_form(float64):
    f = LinearF()
    sigma_d = f.sigma_d
    x_s, dxds = torch.randn(6, 3), torch.randn(6, 3)
    s = torch.rand(6) * 1.5 + 0.02
    for r in (0.0, 0.3, 1.0):
        f_minus, g = scd_target(f, x_s, s, None, dxds, warmup=r)
        ss = s[:, None]
        cos, sin = torch.cos(ss), torch.sin(ss)
        x_in = x_s / sigma_d
        alpha, beta = cos + 0.5, torch.sin(2 * ss)
        # Total derivative of F along the ODE: ∂_s F + ∂_x F·(dx/ds)/σ_d.
        df_ds = -sin * x_in + alpha * dxds / sigma_d + 2 * torch.cos(2 * ss)
        expected_f = alpha * x_in + beta
        expected_g = -(cos**2) * (sigma_d * expected_f - dxds) - r * (
            cos * sin * x_s + sigma_d * cos * sin * df_ds
        )
        torch.testing.assert_close(f_minus, expected_f, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g, expected_g, rtol=1e-12, atol=1e-12)


def test_trigflow_wrapper_of_exact_gaussian_teacher_has_zero_velocity(float64):
    """For N(0, σ_d²) data, TrigFlow keeps Var(x_s) = σ_d², so its exact velocity is 0."""
    a = 1.3
    wrapper = TrigFlowWrapper(GaussianTeacher(a), sigma_d=a)
    x_in, s = torch.randn(50, 4), torch.rand(50) * 1.55 + 0.01
    torch.testing.assert_close(wrapper(x_in, s), torch.zeros_like(x_in), rtol=0, atol=1e-12)


def test_consistency_fn_is_the_teachers_data_prediction(float64):
    """f(x_s, s) = cos s·x_s − sin s·dx/ds equals x̂1 = x_t + (1 − t)·v in linear coordinates."""
    torch.manual_seed(0)
    net = MLPGenerator(3, width=32, depth=1)
    for p in net.parameters():
        nn.init.normal_(p, std=0.3)
    sigma_d = 0.8
    wrapper = TrigFlowWrapper(net, sigma_d)
    t = torch.rand(20) * 0.9 + 0.05
    x_t = torch.randn(20, 3)
    s = linear_to_trig_time(t, sigma_d)
    x_s = trig_scale(s, sigma_d)[:, None] * x_t
    torch.testing.assert_close(consistency_fn(wrapper, x_s, s), data_prediction(net, x_t, t, None))


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_consistency_sampler_with_exact_model_reproduces_data_law(steps):
    torch.manual_seed(0)
    sigma_d = 1.5
    samples = consistency_sample(
        PerfectGaussianStudent(sigma_d), torch.randn(20000, 2), None, steps
    )
    assert abs(float(samples.std()) - sigma_d) < 0.03
    assert float(samples.mean().abs()) < 0.03


def test_guidance_combines_conditional_and_unconditional():
    torch.manual_seed(0)
    net = MLPGenerator(2, width=16, depth=1, num_classes=3)
    for p in net.parameters():
        nn.init.normal_(p, std=0.3)
    x, t, y = torch.randn(4, 2), torch.rand(4), torch.tensor([0, 1, 2, 0])
    cond, uncond = net(x, t, y), net(x, t, None)
    torch.testing.assert_close(guided_velocity(net, x, t, y, 1.0), cond)
    torch.testing.assert_close(guided_velocity(net, x, t, y, 0.0), uncond)
    torch.testing.assert_close(guided_velocity(net, x, t, y, 2.5), uncond + 2.5 * (cond - uncond))
    # p_uncond = 1 trains only the null class.
    x1, noise = torch.randn(4, 2), torch.randn(4, 2)
    full_drop = teacher_loss(net, x1, y, t, noise, p_uncond=1.0)
    null = teacher_loss(net, x1, torch.full_like(y, 3), t, noise, p_uncond=0.0)
    torch.testing.assert_close(full_drop, null)


def test_one_scd_step_decreases_the_regression_to_its_target():
    """sCD's gradient is that of ‖F − sg(F⁻ + g)‖²: a small step reduces that distance."""
    torch.manual_seed(0)
    teacher_net = MLPGenerator(2, width=32, depth=1)
    for p in teacher_net.parameters():
        nn.init.normal_(p, std=0.3)
    teacher = TrigFlowWrapper(teacher_net.requires_grad_(False), 1.0)
    student = TrigFlowWrapper(copy.deepcopy(teacher_net).requires_grad_(True), 1.0)
    x0, noise = torch.randn(256, 2), torch.randn(256, 2)
    s = torch.rand(256) * 1.4 + 0.1
    x_s = torch.cos(s)[:, None] * x0 + torch.sin(s)[:, None] * noise
    dxds = teacher.ode_velocity(x_s, s)
    f_minus, g = scd_target(student, x_s, s, None, dxds)
    g = g / (g.norm(dim=1, keepdim=True) + 0.1)
    target = f_minus + g

    def distance():
        with torch.no_grad():
            return float((student(x_s, s) - target).square().mean())

    before = distance()
    loss, _ = scd_loss(student, teacher, x0, None, s, noise)
    loss.backward()
    with torch.no_grad():
        for p in student.parameters():
            p -= 1e-2 * p.grad
    assert distance() < before


def test_dmd_gradient_points_from_fake_to_real():
    """∂L_DMD/∂x0 = (x̂_fake − x̂_real)/(B·D·scale): samples move towards the teacher."""
    torch.manual_seed(0)
    real, fake = MLPGenerator(2, width=16, depth=1), MLPGenerator(2, width=16, depth=1)
    for p in [*real.parameters(), *fake.parameters()]:
        nn.init.normal_(p, std=0.3)
    x0 = torch.randn(8, 2, requires_grad=True)
    t, noise = torch.rand(8) * 0.9 + 0.05, torch.randn(8, 2)
    dmd_loss(x0, None, real, fake, t, noise).backward()
    with torch.no_grad():
        x_t = (1 - t)[:, None] * noise + t[:, None] * x0
        x_real = data_prediction(real, x_t, t, None)
        x_fake = data_prediction(fake, x_t, t, None)
        scale = (x0 - x_real).abs().mean(dim=1, keepdim=True)
        expected = (x_fake - x_real) / scale / x0.numel()
    torch.testing.assert_close(x0.grad, expected)


def test_wrapper_refuses_bad_sigma():
    with pytest.raises(ValueError, match="sigma_d"):
        TrigFlowWrapper(MLPGenerator(2), sigma_d=0.0)
    assert math.isclose(float(linear_to_trig_time(torch.tensor(0.0))), math.pi / 2, rel_tol=1e-7)
