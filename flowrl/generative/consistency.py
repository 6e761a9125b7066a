"""Flow-matching teachers and their few-step students: CFG, TrigFlow wrapping, sCD and rCM.

Conventions (DESIGN.md section 6, :mod:`flowrl.flow.paths`). Teachers are velocity networks
on the linear path (t = 0 noise, t = 1 data) with the generator signature
``net(x, t, y)``. Students live in TrigFlow: x_s = cos s·x0 + sin s·σ_d·z, s ∈ [0, π/2]
(s = 0 data), a network F with dx_s/ds = σ_d·F(x_s/σ_d, s) and the consistency function

    f(x_s, s) = cos s·x_s − sin s·σ_d·F(x_s/σ_d, s),

which maps any point of an ODE trajectory to its data end. :class:`TrigFlowWrapper` presents
a linear-path velocity network as such an F (through the conversions of
:mod:`flowrl.flow.paths`), so a student starts as an exact copy of its teacher.

**sCD** (continuous-time consistency distillation, Lu & Song 2024). With the teacher's ODE
velocity dx/ds and the student's own frozen copy F⁻, a JVP along the tangent
(cos s sin s·dx/ds, cos s sin s) gives J = σ_d·cos s sin s·dF⁻/ds, and the training target

    g = −cos²s·(σ_d F⁻ − dx/ds) − r·(cos s sin s·x_s + J),

r ramping 0 → 1 (tangent warm-up); g ← g/(‖g‖ + c); loss ‖F − F⁻ − g‖²/D, optionally
weighted adaptively by e^{−u(s)} plus u(s) with a learned u. Its gradient is the
continuous-time consistency gradient.

**rCM** (arXiv 2510.08431) adds λ·L_DMD: the student's few-step samples x0_G are re-noised,
a fake-score network (trained by flow matching on student samples) and the teacher each
predict the data, and x0_G is pulled along (x̂_fake − x̂_real)/mean|x0_G − x̂_real|.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from flowrl.flow.integrators import METHODS, integrate
from flowrl.flow.losses import flow_matching_loss
from flowrl.flow.paths import (
    expand_time,
    linear_interpolate,
    linear_to_trig_time,
    linear_to_trig_velocity,
    trig_to_linear_position,
    trig_to_linear_time,
)
from flowrl.flow.times import TimeGrid, time_grid
from flowrl.nets import MLP, SinusoidalEmbedding

__all__ = [
    "AdaptiveWeight",
    "TrigFlowWrapper",
    "cfg_dropout",
    "consistency_fn",
    "consistency_sample",
    "data_prediction",
    "dmd_loss",
    "fake_score_loss",
    "gft_betas",
    "gft_loss",
    "gft_sample",
    "gft_velocity",
    "guidance_to_beta",
    "guided_velocity",
    "sample_trig_times",
    "scd_loss",
    "scd_target",
    "teacher_loss",
    "teacher_sample",
    "warmup_factor",
]

GeneratorNet = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def _null_labels(net: nn.Module, y: Tensor) -> Tensor:
    return torch.full_like(y, net.null_class)


# ---------------------------------------------------------------------- teacher


def cfg_dropout(
    net: nn.Module, y: Tensor | None, p_uncond: float, generator: torch.Generator | None = None
) -> Tensor | None:
    """Labels with a fraction ``p_uncond`` replaced by the null class (guidance training)."""
    if y is None or p_uncond <= 0:
        return y
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p_uncond
    return torch.where(drop, _null_labels(net, y), y)


def teacher_loss(
    net: nn.Module,
    x1: Tensor,
    y: Tensor | None,
    t: Tensor,
    noise: Tensor,
    p_uncond: float = 0.1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Flow-matching loss of a teacher with classifier-free-guidance label dropout.

    Args:
        net: Velocity network ``net(x_t, t, y)``.
        x1: Data, shape (B, ...).
        y: Labels (B,) or None.
        t: Times (B,) from a time sampler.
        noise: ε ~ N(0, I), shape of x1.
        p_uncond: Probability of dropping a label to the null class.
        generator: RNG of the dropout.

    Returns:
        Scalar batch-mean loss (:func:`flowrl.flow.losses.flow_matching_loss`).
    """
    labels = cfg_dropout(net, y, p_uncond, generator)
    return flow_matching_loss(lambda tt, xt: net(xt, tt, labels), x1, t, noise)


def guided_velocity(
    net: nn.Module, x: Tensor, t: Tensor, y: Tensor | None, guidance: float = 1.0
) -> Tensor:
    """Classifier-free guidance ``v_∅ + w·(v_y − v_∅)``; w = 1 (or y None) is plain ``v_y``.

    The conditional and unconditional evaluations share one batched call.
    """
    if y is None or guidance == 1.0:
        return net(x, t, y)
    both = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, _null_labels(net, y)]))
    cond, uncond = both.chunk(2)
    return uncond + guidance * (cond - uncond)


def teacher_sample(
    net: nn.Module,
    noise: Tensor,
    y: Tensor | None = None,
    num_steps: int | TimeGrid = 32,
    method: str = "euler",
    guidance: float = 1.0,
) -> Tensor:
    """Integrate the (guided) teacher from noise (t = 0) to data over THE K-step grid.

    Args:
        net: Velocity network.
        noise: Starting points ε ~ N(0, I), shape (B, ...).
        y: Labels (B,) or None.
        num_steps: K, or a :class:`~flowrl.flow.times.TimeGrid` (e.g. a BOSS grid).
        method: ``"euler"``, ``"midpoint"`` or ``"heun"``.
        guidance: Classifier-free guidance scale w.

    Returns:
        Samples, shape of ``noise``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown integrator {method!r}; choose one of {METHODS}")
    return integrate(lambda t, x: guided_velocity(net, x, t, y, guidance), noise, num_steps, method)  # type: ignore[arg-type]


def data_prediction(
    net: nn.Module, x_t: Tensor, t: Tensor, y: Tensor | None, guidance: float = 1.0
) -> Tensor:
    """x̂1 = x_t + (1 − t)·v(x_t, t): the data a linear-path velocity field points to."""
    return x_t + expand_time(1.0 - t, x_t) * guided_velocity(net, x_t, t, y, guidance)


# ---------------------------------------------------------------------- TrigFlow


class TrigFlowWrapper(nn.Module):
    """A linear-path velocity network seen as TrigFlow's F(x_s/σ_d, s, y).

    F(x_in, s) = dx_s/ds / σ_d at x_s = σ_d·x_in, where dx_s/ds converts the network's
    linear velocity at x_t = x_s/c(s), t = t(s) (:mod:`flowrl.flow.paths`). Differentiable
    (and JVP-able) in x_in, s and the weights.

    Args:
        net: Velocity network ``net(x_t, t, y)``.
        sigma_d: Data standard deviation σ_d.
        guidance: Classifier-free guidance scale applied inside (teachers); students use 1.
    """

    def __init__(self, net: nn.Module, sigma_d: float = 1.0, guidance: float = 1.0):
        super().__init__()
        if sigma_d <= 0:
            raise ValueError(f"sigma_d must be > 0, got {sigma_d}")
        self.net, self.sigma_d, self.guidance = net, float(sigma_d), float(guidance)

    def forward(self, x_in: Tensor, s: Tensor, y: Tensor | None = None) -> Tensor:
        """F at normalized positions x_in = x_s/σ_d (B, ...) and angles s (B,)."""
        x_s = self.sigma_d * x_in
        t = trig_to_linear_time(s, self.sigma_d)
        x_t = trig_to_linear_position(x_s, s, self.sigma_d)
        velocity = guided_velocity(self.net, x_t, t, y, self.guidance)
        return linear_to_trig_velocity(x_t, velocity, t, self.sigma_d) / self.sigma_d

    def ode_velocity(self, x_s: Tensor, s: Tensor, y: Tensor | None = None) -> Tensor:
        """dx_s/ds = σ_d·F(x_s/σ_d, s)."""
        return self.sigma_d * self(x_s / self.sigma_d, s, y)


def consistency_fn(
    model: TrigFlowWrapper, x_s: Tensor, s: Tensor, y: Tensor | None = None
) -> Tensor:
    """f(x_s, s) = cos s·x_s − sin s·σ_d·F(x_s/σ_d, s): the data end of x_s's trajectory."""
    ss = expand_time(s, x_s)
    return torch.cos(ss) * x_s - torch.sin(ss) * model.ode_velocity(x_s, s, y)


def sample_trig_times(
    n: int,
    p_mean: float = -0.8,
    p_std: float = 1.6,
    sigma_d: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """SCM's training angles s = arctan(e^τ/σ_d), τ ~ N(p_mean, p_std²); shape (n,)."""
    tau = p_mean + p_std * torch.randn(n, generator=generator, device=device)
    return torch.atan(torch.exp(tau) / sigma_d)


def consistency_sample(
    model: TrigFlowWrapper,
    noise: Tensor,
    y: Tensor | None = None,
    num_steps: int | TimeGrid = 1,
    generator: torch.Generator | None = None,
    grad_last_only: bool = False,
) -> Tensor:
    """Few-step consistency sampling: denoise, re-noise to the next angle, denoise again.

    The angles are THE time grid's t_k = k/K mapped to TrigFlow (t_0 = 0 is s = π/2, pure
    noise), so a 1-step student jumps from noise to data and K steps refine.

    Args:
        model: Student F.
        noise: z ~ N(0, I), shape (B, ...).
        y: Labels (B,) or None.
        num_steps: K ≥ 1, or a :class:`~flowrl.flow.times.TimeGrid` (its knots τ_k are the
            angles' times).
        generator: RNG for the re-noising draws.
        grad_last_only: Build a graph through the final step only (rCM's DMD term).

    Returns:
        Samples x0, shape of ``noise``.
    """
    t_grid, _ = time_grid(num_steps, device=noise.device, dtype=noise.dtype)
    angles = linear_to_trig_time(t_grid, model.sigma_d)
    x0 = noise
    for k, s in enumerate(angles):
        last = k == len(angles) - 1
        with torch.set_grad_enabled(torch.is_grad_enabled() and (last or not grad_last_only)):
            if k == 0:
                x_s = model.sigma_d * noise
            else:
                z = torch.randn(
                    noise.shape, generator=generator, device=noise.device, dtype=noise.dtype
                )
                x_s = torch.cos(s) * x0 + torch.sin(s) * model.sigma_d * z
            x0 = consistency_fn(model, x_s, s.expand(noise.shape[0]), y)
    return x0


# ---------------------------------------------------------------------- sCD


def scd_target(
    student: TrigFlowWrapper,
    x_s: Tensor,
    s: Tensor,
    y: Tensor | None,
    dxds: Tensor,
    warmup: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """F⁻ and the (unnormalized) sCM target g, both without gradient.

    Args:
        student: The student F (its current weights serve as F⁻).
        x_s: TrigFlow points, shape (B, ...).
        s: Angles, shape (B,).
        y: Labels or None.
        dxds: The teacher's ODE velocity at (x_s, s), shape (B, ...).
        warmup: r ∈ [0, 1], the tangent warm-up factor.

    Returns:
        ``(F⁻ (B, ...), g (B, ...))`` with
        g = −cos²s·(σ_d F⁻ − dx/ds) − r·(cos s sin s·x_s + σ_d·cos s sin s·dF⁻/ds).
    """
    sigma_d = student.sigma_d
    ss = expand_time(s, x_s)
    cos, sin = torch.cos(ss), torch.sin(ss)
    with torch.no_grad():
        # J/σ_d = cos s sin s·dF⁻/ds: the JVP of F⁻ along the ODE, time tangent included.
        f_minus, f_dot = torch.func.jvp(
            lambda x_in, angle: student(x_in, angle, y),
            (x_s / sigma_d, s),
            (cos * sin * dxds / sigma_d, torch.cos(s) * torch.sin(s)),
        )
        g = -(cos**2) * (sigma_d * f_minus - dxds) - warmup * (cos * sin * x_s + sigma_d * f_dot)
    return f_minus, g


class AdaptiveWeight(nn.Module):
    """Learned log-weight u(s) of sCM's adaptive weighting, shape (B,) from angles (B,)."""

    def __init__(self, dim: int = 64, hidden: int = 64):
        super().__init__()
        self.embedding = SinusoidalEmbedding(dim, max_frequency=16.0)
        self.mlp = MLP(dim, 1, (hidden,), act="silu", zero_last=True)

    def forward(self, s: Tensor) -> Tensor:
        """u(s), shape (B,)."""
        return self.mlp(self.embedding(s)).squeeze(-1)


def scd_loss(
    student: TrigFlowWrapper,
    teacher: TrigFlowWrapper,
    x0: Tensor,
    y: Tensor | None,
    s: Tensor,
    noise: Tensor,
    warmup: float = 1.0,
    tangent_norm: float = 0.1,
    weight: AdaptiveWeight | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Continuous-time consistency distillation loss (sCD) on one batch.

    Args:
        student: Student F (trained).
        teacher: Teacher F (frozen; its guidance scale applies).
        x0: Data, shape (B, ...).
        y: Labels (B,) or None.
        s: Angles (B,), e.g. from :func:`sample_trig_times`.
        noise: z ~ N(0, I), shape of x0.
        warmup: Tangent warm-up factor r ∈ [0, 1].
        tangent_norm: c in g ← g/(‖g‖ + c); ≤ 0 disables the normalization.
        weight: Adaptive weighting u(s), or None for a uniform weight.

    Returns:
        ``(loss, stats)``: the scalar loss and detached diagnostics (``mse``, ``g_norm``).
    """
    sigma_d = student.sigma_d
    ss = expand_time(s, x0)
    x_s = torch.cos(ss) * x0 + torch.sin(ss) * sigma_d * noise
    with torch.no_grad():
        dxds = teacher.ode_velocity(x_s, s, y)
    f_minus, g = scd_target(student, x_s, s, y, dxds, warmup)
    g_norm = g.flatten(1).norm(dim=1)
    if tangent_norm > 0:
        g = g / expand_time(g_norm + tangent_norm, g)
    f = student(x_s / sigma_d, s, y)
    mse = (f - f_minus - g).square().flatten(1).mean(dim=1)
    if weight is None:
        loss = mse.mean()
    else:
        u = weight(s)
        loss = (torch.exp(-u) * mse + u).mean()
    return loss, {"mse": mse.mean().detach(), "g_norm": g_norm.mean().detach()}


# ---------------------------------------------------------------------- rCM


def dmd_loss(
    x0_g: Tensor,
    y: Tensor | None,
    teacher: nn.Module,
    fake: nn.Module,
    t: Tensor,
    noise: Tensor,
    guidance: float = 1.0,
) -> Tensor:
    """Distribution-matching (DMD) loss on student samples, as rCM uses it.

    The samples are re-noised on the linear path at times t; the guided teacher and the
    fake-score network (both linear-path velocity nets) predict the data there, and
    x0_G is regressed onto ``sg(x0_G − ∇)``, ∇ = (x̂_fake − x̂_real)/mean|x0_G − x̂_real|.

    Args:
        x0_g: Student samples with their graph, shape (B, ...).
        y: Labels (B,) or None.
        teacher: Teacher velocity network (frozen).
        fake: Fake-score velocity network (trained separately on student samples).
        t: Re-noising times (B,) in (0, 1).
        noise: ε ~ N(0, I), shape of x0_g.
        guidance: Teacher guidance scale.

    Returns:
        Scalar loss whose gradient w.r.t. x0_G is ∇/B·(per-sample dims mean).
    """
    with torch.no_grad():
        x_t = linear_interpolate(noise, x0_g, t)
        real = data_prediction(teacher, x_t, t, y, guidance)
        fake_pred = data_prediction(fake, x_t, t, y)
        scale = (x0_g - real).abs().flatten(1).mean(dim=1).clamp_min(1e-6)
        direction = (fake_pred - real) / expand_time(scale, real)
        target = x0_g - direction
    return 0.5 * (x0_g - target).square().flatten(1).mean(dim=1).mean()


def fake_score_loss(
    fake: nn.Module, samples: Tensor, y: Tensor | None, t: Tensor, noise: Tensor
) -> Tensor:
    """Flow matching of the fake-score network on (detached) student samples."""
    return flow_matching_loss(lambda tt, xt: fake(xt, tt, y), samples.detach(), t, noise)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Tangent warm-up r = min(1, step / warmup_steps) (1 when warmup_steps ≤ 0)."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


# ---------------------------------------------------------------------- guidance-free training


def _require_guidance_input(net: nn.Module, what: str) -> None:
    if not getattr(net, "guidance_input", False):
        raise ValueError(
            f"{what} needs a network with a guidance input (net(x, t, y, beta)): build it "
            "with guidance_input=True, or convert a trained CFG net with "
            "flowrl.generative.models.with_guidance_input"
        )


def guidance_to_beta(guidance: float) -> float:
    """GFT's β = 1/w for a guidance scale w ≥ 1 (w = 1: β = 1, the conditional model).

    Raises:
        ValueError: If w is not a finite number ≥ 1.
    """
    try:
        w = float(guidance)
    except (TypeError, ValueError):
        raise ValueError(f"guidance must be a number >= 1, got {guidance!r}") from None
    if not math.isfinite(w) or w < 1.0:
        raise ValueError(
            f"guidance must be a finite number >= 1 (GFT's beta = 1/guidance in (0, 1]), "
            f"got {guidance!r}"
        )
    return 1.0 / w


def gft_betas(
    n: int,
    beta_range: tuple[float, float] = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample training guidance strengths β ~ U(beta_range) (GFT: U(0, 1)), shape (n,)."""
    low, high = beta_range
    return low + (high - low) * torch.rand(n, generator=generator)


def gft_velocity(
    net: nn.Module, x: Tensor, t: Tensor, y: Tensor | None, beta: Tensor
) -> tuple[Tensor, Tensor]:
    """GFT's sampling-model output and implicit conditional velocity at (x, t).

    ``v_s = net(x, t, y, β)`` (the sampling model, with gradient) and the implicit
    conditional model ``v_c = β·v_s + (1 − β)·sg[v_u]``, where ``v_u = net(x, t, ∅, 1)`` is
    the unconditional model, evaluated without gradient (the stop-gradient of GFT).

    Shapes:
        x (B, ...), t (B,), y (B,) (null class allowed), beta (B,) → two tensors like x.
    """
    v_s = net(x, t, y, beta)
    if bool((beta == 1).all()):
        return v_s, v_s  # (1 − β) = 0: the unconditional term vanishes
    with torch.no_grad():
        null = None if y is None else torch.full_like(y, net.null_class)  # None: null class
        v_u = net(x, t, null, torch.ones_like(beta))
    b = expand_time(beta.to(x.dtype), x)
    return v_s, b * v_s + (1 - b) * v_u


def gft_loss(
    net: nn.Module,
    x1: Tensor,
    y: Tensor,
    t: Tensor,
    noise: Tensor,
    beta: Tensor,
    p_uncond: float = 0.1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Guidance-Free Training loss (Chen et al. 2025, arXiv 2501.15420), velocity form.

    The conditional velocity is parameterised implicitly through the sampling model
    ``v_s(x, t, y, β)`` and the unconditional model ``v_u(x, t) = v_s(x, t, ∅, 1)``:

        v_c(x, t, y) = β·v_s(x, t, y, β) + (1 − β)·sg[v_u(x, t)],

    and trained with CFG's own objective, conditional flow matching ‖v_c − (x1 − ε)‖². A
    fraction ``p_uncond`` of the labels is dropped to the null class (drawn from
    ``generator`` exactly as :func:`teacher_loss` draws it) and those rows get β = 1, so
    they train ``v_u`` itself with the ordinary loss. At sampling time
    ``v_s(x, t, y, β) = v_u + (1/β)·(v_c − v_u)`` is CFG with w = 1/β, in one call.

    With β = 1 everywhere this is :func:`teacher_loss` of the conditional model
    ``net(·, ·, ·, 1)`` (same value, same gradient).

    Args:
        net: Network with a guidance input, ``net(x_t, t, y, beta)``.
        x1: Data, shape (B, ...).
        y: Labels (B,).
        t: Times (B,) from a time sampler.
        noise: ε ~ N(0, I), shape of x1.
        beta: Guidance strengths (B,) in [0, 1] (:func:`gft_betas`).
        p_uncond: Probability of dropping a label to the null class.
        generator: RNG of the dropout.

    Returns:
        Scalar batch-mean loss (:func:`flowrl.flow.losses.flow_matching_loss`).

    Raises:
        ValueError: If the net has no guidance input, y is None, or beta has another shape
            or values outside [0, 1].
    """
    _require_guidance_input(net, "gft_loss")
    if y is None:
        raise ValueError("gft_loss needs class labels y (guidance is defined for conditionals)")
    if beta.shape != (len(x1),):
        raise ValueError(f"beta must have shape ({len(x1)},), got {tuple(beta.shape)}")
    if not bool(((beta >= 0) & (beta <= 1)).all()):
        raise ValueError("beta must lie in [0, 1]")
    labels = cfg_dropout(net, y, p_uncond, generator)
    beta = torch.where(labels == net.null_class, torch.ones_like(beta), beta)
    return flow_matching_loss(
        lambda tt, xt: gft_velocity(net, xt, tt, labels, beta)[1], x1, t, noise
    )


def gft_sample(
    net: nn.Module,
    noise: Tensor,
    y: Tensor | None = None,
    num_steps: int | TimeGrid = 32,
    method: str = "euler",
    guidance: float = 1.0,
) -> Tensor:
    """Integrate a GFT sampling model at guidance w (β = 1/w): ONE network call per Euler step.

    Same grid (an int K or a :class:`~flowrl.flow.times.TimeGrid`) and integrators as
    :func:`teacher_sample`; ``y=None`` samples the
    unconditional model (w must then be 1).

    Raises:
        ValueError: If the net has no guidance input, w is not a finite number ≥ 1, or w ≠ 1
            without labels.
    """
    _require_guidance_input(net, "gft_sample")
    beta_value = guidance_to_beta(guidance)
    if y is None and beta_value != 1.0:
        raise ValueError("guidance > 1 needs class labels y")
    if method not in METHODS:
        raise ValueError(f"unknown integrator {method!r}; choose one of {METHODS}")
    beta = torch.full((noise.shape[0],), beta_value, dtype=noise.dtype, device=noise.device)
    return integrate(lambda t, x: net(x, t, y, beta), noise, num_steps, method)  # type: ignore[arg-type]
