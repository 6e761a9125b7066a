"""BOSS straightening for generators (flowrl.generative.boss) and the samplers on a TimeGrid."""

import pytest
import torch

from flowrl.flow.boss import bellman_grid, local_error_costs
from flowrl.flow.integrators import integrate
from flowrl.flow.times import TimeGrid
from flowrl.generative.boss import BossConfig, BossTrainer, boss_reference, teacher_velocity
from flowrl.generative.consistency import (
    TrigFlowWrapper,
    consistency_sample,
    guided_velocity,
    teacher_sample,
)
from flowrl.generative.models import MLPGenerator


def _teacher(seed=0):
    torch.manual_seed(seed)
    net = MLPGenerator(2, 32, 2, num_classes=3)
    for p in net.parameters():  # a non-trivial field (the last layer starts at zero)
        torch.nn.init.normal_(p, std=0.3)
    return net.eval()


def test_samplers_take_a_time_grid():
    net, grid = _teacher(), TimeGrid((0.0, 0.2, 0.7, 1.0))
    noise, y = torch.randn(6, 2), torch.arange(6) % 3
    with torch.no_grad():
        out = teacher_sample(net, noise, y, grid, guidance=1.5)
        expected = integrate(lambda t, x: guided_velocity(net, x, t, y, 1.5), noise, grid)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        student = TrigFlowWrapper(net)
        one = consistency_sample(student, noise, y, TimeGrid.uniform(1))
        torch.testing.assert_close(one, consistency_sample(student, noise, y, 1))
        assert consistency_sample(student, noise, y, grid).shape == (6, 2)


def test_boss_trainer_straightens_and_resumes(tmp_path):
    net = _teacher()
    noise, y = (
        torch.randn(256, 2, generator=torch.Generator().manual_seed(0)),
        torch.arange(256) % 3,
    )
    with torch.no_grad():
        trajectory = boss_reference(net, noise, y, 12, guidance=1.5, batch_size=100)
        assert trajectory.shape == (13, 256, 2)
        costs = local_error_costs(teacher_velocity(net, y, 1.5), trajectory, 12)
    result = bellman_grid(None, noise, 3, 12, trajectory=trajectory, costs=costs)
    states = trajectory[list(result.indices)].transpose(0, 1)
    config = BossConfig(steps=150, batch_size=64, lr=3e-3, guidance=1.5, ema_decay=0.9)
    trainer = BossTrainer(net, result.grid, states, y, config, tmp_path / "boss")
    before = [p.detach().clone() for p in net.parameters()]
    trainer.fit(progress_bar=False, tensorboard=False)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    losses = [h["loss"] for h in trainer.history]
    assert sum(losses[-20:]) < 0.5 * sum(losses[:20])
    # Euler on the grid now lands closer to the reference endpoint than the teacher's.
    with torch.no_grad():

        def error(model):
            out = teacher_sample(model, noise, y, result.grid, guidance=1.5)
            return float((out - trajectory[-1]).norm(dim=-1).mean())

        assert error(trainer.straightened) < error(net)
    again = BossTrainer(net, result.grid, states, y, config, tmp_path / "boss")
    again.load_checkpoint(tmp_path / "boss" / "checkpoint.pt")
    assert again.step == 150
    other = TimeGrid.uniform(3)
    wrong = BossTrainer(net, other, states, y, config)
    with pytest.raises(ValueError, match="straightened the grid"):
        wrong.load_checkpoint(tmp_path / "boss" / "checkpoint.pt")
    with pytest.raises(ValueError, match="K\\+1 = 5"):
        BossTrainer(net, TimeGrid.uniform(4), states, y, config)
