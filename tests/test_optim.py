"""flowrl.optim's learning-rate schedules: values, pickling, and reaching SB3's optimizers."""

import math
import pickle

import cloudpickle
import pytest

from flowrl.algos import ReinFlow
from flowrl.optim import (
    ConstantSchedule,
    CosineSchedule,
    LinearSchedule,
    cosine_schedule,
    linear_schedule,
    make_schedule,
)


@pytest.mark.parametrize(
    ("schedule", "at_start", "at_half", "at_end"),
    [
        (ConstantSchedule(1e-3), 1e-3, 1e-3, 1e-3),
        (linear_schedule(1e-3), 1e-3, 5e-4, 0.0),
        (linear_schedule(1e-3, final_fraction=0.1), 1e-3, 5.5e-4, 1e-4),
        (cosine_schedule(1e-3), 1e-3, 5e-4, 0.0),
        (cosine_schedule(2e-3, final_fraction=0.5), 2e-3, 1.5e-3, 1e-3),
    ],
)
def test_values_at_progress_one_half_and_zero(schedule, at_start, at_half, at_end):
    assert schedule(1.0) == pytest.approx(at_start, abs=1e-15)
    assert schedule(0.5) == pytest.approx(at_half, abs=1e-15)
    assert schedule(0.0) == pytest.approx(at_end, abs=1e-15)
    # Outside [0, 1] (SB3 can overshoot by a rollout) the end values hold.
    assert schedule(-0.25) == pytest.approx(at_end, abs=1e-15)
    assert schedule(1.5) == pytest.approx(at_start, abs=1e-15)


def test_cosine_shape_and_monotonicity():
    schedule = cosine_schedule(1.0, final_fraction=0.2)
    assert schedule(0.75) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 4)))
    values = [schedule(1 - i / 20) for i in range(21)]
    assert all(a >= b for a, b in zip(values[:-1], values[1:], strict=True))


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps])
def test_schedules_pickle_round_trip(dumps):
    for schedule in (ConstantSchedule(3e-4), linear_schedule(3e-4, 0.1), cosine_schedule(3e-4)):
        loaded = pickle.loads(dumps(schedule))
        assert loaded == schedule and type(loaded) is type(schedule)
        assert [loaded(p) for p in (1.0, 0.3, 0.0)] == [schedule(p) for p in (1.0, 0.3, 0.0)]


def test_make_schedule_and_bad_arguments():
    assert make_schedule("constant", 1e-3, 0.5) == ConstantSchedule(1e-3)
    assert make_schedule("linear", 1e-3, 0.5) == LinearSchedule(1e-3, 0.5)
    assert make_schedule("cosine", 1e-3) == CosineSchedule(1e-3, 0.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        make_schedule("exponential", 1e-3)
    with pytest.raises(ValueError, match="initial_value"):
        linear_schedule(0.0)
    with pytest.raises(ValueError, match="final_fraction"):
        cosine_schedule(1e-3, final_fraction=-0.1)


def test_schedules_reach_both_optimizers_and_survive_save_load(tmp_path):
    actor, critic = linear_schedule(1e-3, 0.1), cosine_schedule(2e-3, 0.5)
    model = ReinFlow(
        "FlowPolicy",
        "Pendulum-v1",
        n_steps=32,
        batch_size=16,
        n_epochs=1,
        seed=0,
        learning_rate=actor,
        critic_learning_rate=critic,
        policy_kwargs=dict(num_steps=1, actor_config=dict(width=16, depth=1), value_hidden=(8,)),
    )
    model.learn(64)  # updates at remaining progress 1/2 and 0
    assert model.policy.optimizer.param_groups[0]["lr"] == pytest.approx(actor(0.0))
    assert model.policy.critic_optimizer.param_groups[0]["lr"] == pytest.approx(critic(0.0))
    assert model.logger.name_to_value["train/learning_rate"] == pytest.approx(1e-4)
    model.save(tmp_path / "model.zip")
    loaded = ReinFlow.load(tmp_path / "model.zip")
    assert loaded.critic_learning_rate == critic
    assert loaded.lr_schedule(0.5) == pytest.approx(actor(0.5))
