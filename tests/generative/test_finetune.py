"""Reward fine-tuning of generators (DiffusionNFT and the reward-weighted baseline)."""

import pytest
import torch

from flowrl.generative.data import mixture
from flowrl.generative.finetune import (
    ClassProbabilityReward,
    RegionMassReward,
    RewardFinetuneConfig,
    RewardFinetuneTrainer,
    group_advantages,
)
from flowrl.generative.models import MLPGenerator

torch.set_num_threads(1)


def _points():
    x, y = mixture(512, "8gaussians", 2.0, 0.1, seed=0)
    return x, y


def _reward(samples, labels):
    return samples[:, 0]


def _trainer(tmp_path=None, **change):
    torch.manual_seed(0)
    x, y = _points()
    net = MLPGenerator(2, 32, 1, num_classes=8)
    cfg = RewardFinetuneConfig(
        **{"steps": 6, "batch_size": 32, "group_size": 8, "sample_steps": 2, **change}
    )
    return RewardFinetuneTrainer(net, _reward, x, y, cfg, tmp_path)


def test_group_advantages_are_normalized_within_each_group():
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0])
    adv = group_advantages(rewards, 3)
    torch.testing.assert_close(adv[:3], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-3, rtol=0)
    assert adv[3:].abs().max() == 0  # a constant group carries no signal
    assert torch.equal(group_advantages(rewards, 3, scale=False)[:3], torch.tensor([-1.0, 0, 1]))
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(rewards, 4)


def test_rewards():
    images = -torch.ones(2, 1, 8, 8)
    images[1, :, :4] = 1.0  # ink in the top half
    top = RegionMassReward(rows=(0, 4))(images, None)
    torch.testing.assert_close(top, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="empty"):
        RegionMassReward(rows=(4, 4))(images, None)

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[0.0, 2.0], [1.0, 0.0]])

    probs = ClassProbabilityReward(Fixed())(images, torch.tensor([1, 1]))
    expected = torch.tensor([[0.0, 2.0], [1.0, 0.0]]).softmax(1)[:, 1]
    torch.testing.assert_close(probs, expected)
    torch.testing.assert_close(
        ClassProbabilityReward(Fixed(), target=0)(images, None), 1 - expected
    )
    with pytest.raises(ValueError, match="needs labels"):
        ClassProbabilityReward(Fixed())(images, None)


@pytest.mark.parametrize("method", ["nft", "rwr"])
def test_resume_is_bit_exact(tmp_path, method):
    whole = _trainer(tmp_path / "whole", method=method, kl_coef=0.5)
    whole.fit(progress_bar=False, tensorboard=False)
    half = _trainer(tmp_path / "half", method=method, kl_coef=0.5)
    half.fit(3, progress_bar=False, tensorboard=False)
    resumed = _trainer(tmp_path / "half", method=method, kl_coef=0.5)
    resumed.fit(progress_bar=False, tensorboard=False)
    assert resumed.resumed_from == 3
    for a, b in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(whole.old.shadow.parameters(), resumed.old.shadow.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [r["reward"] for r in whole.history] == [r["reward"] for r in resumed.history]
    # The reference stays the starting network; the old model trails the trained one.
    start = _trainer().model
    for a, b in zip(start.parameters(), resumed.reference.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_checkpoint_of_another_config_is_refused(tmp_path):
    _trainer(tmp_path, beta=1.0).fit(2, progress_bar=False, tensorboard=False)
    with pytest.raises(ValueError, match="another config .*beta"):
        _trainer(tmp_path, beta=0.5).fit(progress_bar=False, tensorboard=False)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"method": "grpo"}, "method must be one of"),
        ({"beta": 0.0}, "beta must be a positive"),
        ({"clip_max": float("inf")}, "clip_max must be a positive"),
        ({"temperature": -1.0}, "temperature must be a positive"),
        ({"kl_coef": -0.1}, "kl_coef must be >= 0"),
        ({"old_decay": 1.0}, r"old_decay must lie in \[0, 1\)"),
        ({"group_size": 5}, "group_size must be >= 2 and divide batch_size"),
        ({"group_size": 1}, "group_size must be >= 2"),
        ({"sample_steps": 0}, "sample_steps must be >= 1"),
        ({"guidance": 0.5}, "guidance must be >= 1"),
    ],
)
def test_bad_configs(change, match):
    with pytest.raises(ValueError, match=match):
        RewardFinetuneConfig(**{"batch_size": 32, "group_size": 8, **change})


def test_bad_rewards():
    x, y = _points()
    net = MLPGenerator(2, 16, 1, num_classes=8)
    cfg = RewardFinetuneConfig(steps=1, batch_size=16, group_size=8, sample_steps=1)
    with pytest.raises(ValueError, match="reward must be callable"):
        RewardFinetuneTrainer(net, "accuracy", x, y, cfg)  # type: ignore[arg-type]
    wrong_shape = RewardFinetuneTrainer(net, lambda s, labels: s, x, y, cfg)
    with pytest.raises(ValueError, match=r"shape \(16,\)"):
        wrong_shape.train_step()
    nan = RewardFinetuneTrainer(net, lambda s, y: s[:, 0] * float("nan"), x, y, cfg)
    with pytest.raises(FloatingPointError, match="NaN or inf at step 0"):
        nan.train_step()
    assert nan.step == 0  # nothing was applied


def test_samples_are_grouped_by_label():
    trainer = _trainer()
    labels = trainer._prompts()
    assert labels.shape == (32,)
    assert (labels.view(4, 8) == labels.view(4, 8)[:, :1]).all()  # one label per group
