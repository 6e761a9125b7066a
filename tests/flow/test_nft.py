"""DiffusionNFT's loss: its algebra, its gradient, its minimizer and its refusals."""

import pytest
import torch

from flowrl.flow.losses import nft_loss, optimality_probability


def _draw(b=16, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(b, d, generator=g, dtype=torch.float64)
    old = torch.randn(b, d, generator=g, dtype=torch.float64)
    target = torch.randn(b, d, generator=g, dtype=torch.float64)
    r = torch.rand(b, generator=g, dtype=torch.float64)
    return v, old, target, r


def test_optimality_probability_maps_clipped_advantages_into_unit_interval():
    adv = torch.tensor([-5.0, -2.0, -1.0, 0.0, 0.5, 2.0, 9.0])
    r = optimality_probability(adv, clip_max=2.0)
    assert torch.allclose(r, torch.tensor([0.0, 0.0, 0.25, 0.5, 0.625, 1.0, 1.0]))
    with pytest.raises(ValueError, match="clip_max"):
        optimality_probability(adv, clip_max=0.0)


@pytest.mark.parametrize("beta", [0.1, 1.0, 2.5])
def test_loss_equals_its_expanded_form(beta):
    """β·ℓ = ‖e‖² + β²‖d‖² + 2β(2r − 1)⟨e, d⟩ with e = v_old − u, d = v_θ − v_old."""
    v, old, target, r = _draw()
    per_sample = nft_loss(v, old, target, r, beta=beta, reduction="none")
    e, d = old - target, v - old
    dims = v.shape[1]
    expanded = (
        e.square().sum(1) + beta**2 * d.square().sum(1) + 2 * beta * (2 * r - 1) * (e * d).sum(1)
    ) / (beta * dims)
    torch.testing.assert_close(per_sample, expanded, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("beta", [0.3, 1.0])
def test_gradient_at_the_old_policy_is_advantage_signed_flow_matching(beta):
    """At v_θ = v_old: ∂ℓ/∂v = 2(2r − 1)(v_old − u)/D — towards u for r > 1/2, away below."""
    _, old, target, r = _draw(seed=1)
    v = old.clone().requires_grad_(True)
    nft_loss(v, old, target, r, beta=beta, reduction="sum").backward()
    expected = 2 * (2 * r[:, None] - 1) * (old - target) / old.shape[1]
    torch.testing.assert_close(v.grad, expected, rtol=1e-12, atol=1e-12)
    # r = 1/2 (a sample at its baseline) gives no push at all.
    v.grad = None
    nft_loss(v, old, target, torch.full_like(r, 0.5), beta=beta, reduction="sum").backward()
    assert v.grad.abs().max() < 1e-15  # (round-off of (1 ± β)·v_old)


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_minimizer_is_old_plus_signed_step(beta):
    """Per sample the loss is minimized by v* = v_old + (2r − 1)(u − v_old)/β."""
    _, old, target, r = _draw(b=4, d=3, seed=2)
    v = old.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([v], max_iter=200, tolerance_grad=1e-14, tolerance_change=1e-16)

    def closure():
        opt.zero_grad()
        loss = nft_loss(v, old, target, r, beta=beta, reduction="sum")
        loss.backward()
        return loss

    opt.step(closure)
    expected = old + (2 * r[:, None] - 1) * (target - old) / beta
    torch.testing.assert_close(v.detach(), expected, rtol=1e-6, atol=1e-6)


def test_scale_and_adaptive_weighting():
    v, old, target, r = _draw(seed=3)
    s = torch.rand(v.shape[0], 1, dtype=v.dtype) + 0.1
    scaled = nft_loss(v, old, target, r, scale=s, reduction="none")
    plain = nft_loss(v, old, target, r, reduction="none")
    torch.testing.assert_close(scaled, s.squeeze(1).square() * plain)
    # Adaptive: each branch divided by its detached mean |residual|; scale-free per sample.
    a = nft_loss(v, old, target, r, scale=s, adaptive=True, reduction="none")
    b = nft_loss(v, old, target, r, adaptive=True, reduction="none")
    torch.testing.assert_close(a, s.squeeze(1) * b)


def test_refusals():
    v, old, target, r = _draw()
    with pytest.raises(ValueError, match="one shape"):
        nft_loss(v, old[:, :2], target, r)
    with pytest.raises(ValueError, match="one r per sample"):
        nft_loss(v, old, target, r[:3])
    with pytest.raises(ValueError, match="beta"):
        nft_loss(v, old, target, r, beta=0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        nft_loss(v, old, target, r + 1.5)


def test_toy_flow_moves_towards_reward_with_one_network_call_per_step():
    """A 2-D flow fine-tuned by NFT: the sample mean climbs a known reward; the gradient
    goes through one network call (no sampler, no likelihood in the backward pass)."""
    from flowrl.generative.data import mixture
    from flowrl.generative.finetune import RewardFinetuneConfig, RewardFinetuneTrainer
    from flowrl.generative.models import MLPGenerator
    from flowrl.generative.trainer import TeacherConfig, TeacherTrainer

    torch.manual_seed(0)
    x, _ = mixture(4000, "8gaussians", 2.0, 0.1, seed=0)
    teacher = TeacherTrainer(
        MLPGenerator(2, 64, 2),
        x,
        None,
        TeacherConfig(
            steps=400, batch_size=256, lr=3e-3, warmup_steps=20, ema_decay=0.99, p_uncond=0.0
        ),
    )
    teacher.fit(progress_bar=False, tensorboard=False)
    goal = torch.tensor([2.0, 0.0])

    def reward(samples, labels):
        return -(samples - goal).norm(dim=1)

    cfg = RewardFinetuneConfig(steps=60, batch_size=128, group_size=16, lr=1e-3, sample_steps=8)
    trainer = RewardFinetuneTrainer(teacher.teacher, reward, x, None, cfg)
    calls = {"grad": 0, "no_grad": 0}

    def count(module, args):
        calls["grad" if torch.is_grad_enabled() else "no_grad"] += 1

    trainer.model.register_forward_pre_hook(count)
    torch.manual_seed(1)
    before = reward(trainer.sample(2000), None).mean()
    trainer.fit(progress_bar=False, tensorboard=False)
    assert calls["grad"] == 60  # one differentiated call per step; the sampler runs on θ_old
    torch.manual_seed(1)
    after_samples = trainer.sample(2000)
    after = reward(after_samples, None).mean()
    assert before < -2.0 and after > -0.8, (float(before), float(after))
    # Still on the data: the samples sit on the circle of modes, not on the goal's line.
    assert abs(float(after_samples.norm(dim=1).mean()) - 2.0) < 0.2
