"""ReinFlow's own parts: the chain buffer, the σ_max schedule, the log-prob reduction.

What every on-policy learner shares (ratio 1, NaN refusal, checkpoints, the SB3 surface) is
tested for ReinFlow in ``test_on_policy_learners.py``.
"""

import numpy as np
import pytest
import torch
from learner_helpers import assert_same_state, rollout, state, update
from stable_baselines3.common.callbacks import BaseCallback

from flowrl.algos import ChainRolloutBuffer, ReinFlow


def _kwargs(K=2, **extra):
    return dict(
        num_steps=K,
        actor_config=dict(width=32, depth=1),
        noise_hidden=(16,),
        value_hidden=(32,),
        **extra,
    )


def _model(env="Pendulum-v1", K=2, n_steps=32, batch_size=16, seed=0, policy_kwargs=None, **kw):
    return ReinFlow(
        "FlowPolicy",
        env,
        n_steps=n_steps,
        batch_size=batch_size,
        n_epochs=2,
        seed=seed,
        policy_kwargs=_kwargs(K) if policy_kwargs is None else policy_kwargs,
        **kw,
    )


# ---------------------------------------------------------------------- the update's invariants


@pytest.mark.parametrize("K", [1, 4])
def test_chains_are_stored_and_sigma_stays_in_its_bounds(K):
    model = _model(K=K)
    assert isinstance(model.rollout_buffer, ChainRolloutBuffer)
    assert model.rollout_buffer.chains.shape == (32, 1, K + 1, 1)
    model.learn(64)
    values = update(model)
    assert values["flow/ratio_first_minibatch_max_deviation"] == 0.0
    assert 0.10 <= values["flow/sigma_mean"] <= 0.24
    assert values["flow/sigma_max"] == pytest.approx(0.24)


def test_sampler_mismatch_raises():
    model = _model(K=4)
    rollout(model)
    original = model.policy.log_prob_chain
    model.policy.log_prob_chain = lambda obs, chain: original(obs, chain) + 0.1
    actor_before = state(model.policy.actor)
    with pytest.raises(RuntimeError, match="sampler") as info:
        model.train()
    assert "grid" in str(info.value)
    assert_same_state(actor_before, state(model.policy.actor))


def test_log_prob_mean_reduction_and_log_ratio_clip():
    model = _model(K=4, log_prob_reduction="mean", log_ratio_clip=0.5)
    values = update(model)
    assert values["flow/ratio_first_minibatch"] == 1.0
    assert values["flow/ratio_first_minibatch_max_deviation"] == 0.0
    values = update(model)
    assert np.isfinite(values["flow/ratio_mean"])


def test_log_ratio_reduction_and_clip():
    new = torch.tensor([30.0, -30.0, 0.8, 0.0], dtype=torch.float64)
    old = torch.zeros(4, dtype=torch.float64)
    summed = _model(K=4)._log_ratio(new, old)
    torch.testing.assert_close(summed, new)
    mean = _model(K=4, log_prob_reduction="mean")._log_ratio(new, old)  # ÷ K·Da = 4
    torch.testing.assert_close(mean, new / 4)
    model = _model(K=4, log_prob_reduction="mean", log_ratio_clip=0.5)
    clipped = model._clip_log_ratio(model._log_ratio(new, old))
    torch.testing.assert_close(clipped, torch.tensor([0.5, -0.5, 0.2, 0.0], dtype=torch.float64))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(log_prob_reduction="max"), "log_prob_reduction"),
        (dict(batch_size=1), "batch_size"),
        (dict(sigma_hold_fraction=1.5), "sigma_hold_fraction"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _model(**kwargs)


# ---------------------------------------------------------------------- σ_max schedule


def test_sigma_max_schedule():
    model = _model(sigma_max_final=0.12, sigma_hold_fraction=0.5)
    assert model.sigma_max_at(1.0) == pytest.approx(0.24)
    assert model.sigma_max_at(0.6) == pytest.approx(0.24)
    assert model.sigma_max_at(0.5) == pytest.approx(0.24)
    assert model.sigma_max_at(0.25) == pytest.approx(0.18)
    assert model.sigma_max_at(0.0) == pytest.approx(0.12)
    values = [model.sigma_max_at(p) for p in np.linspace(0.5, 0.0, 11)]
    assert all(a >= b for a, b in zip(values[:-1], values[1:], strict=True))
    constant = _model()
    assert constant.sigma_max_at(0.0) == pytest.approx(0.24)


def test_sigma_max_schedule_reaches_the_policy():
    model = _model(sigma_max_final=0.12, sigma_hold_fraction=0.0, n_steps=32)
    model.learn(96)  # rollouts start at progress 1, 2/3 and 1/3
    expected = model.sigma_max_at(1 / 3)
    assert expected < 0.24
    assert float(model.policy.sigma_max) == pytest.approx(expected, abs=1e-6)
    assert model.policy._sigma_max_init == pytest.approx(0.24)


class _SigmaMaxAtRollouts(BaseCallback):
    """Records the σ_max buffer each rollout samples with (set before on_rollout_start)."""

    def __init__(self):
        super().__init__()
        self.seen: list[float] = []

    def _on_rollout_start(self) -> None:
        self.seen.append(float(self.model.policy.sigma_max))

    def _on_step(self) -> bool:
        return True


def test_sigma_max_schedule_in_one_learn_call():
    model = _model(sigma_max_final=0.12, sigma_hold_fraction=0.0)
    record = _SigmaMaxAtRollouts()
    model.learn(64, callback=record)  # rollouts at progress 1 and 1/2
    assert record.seen == pytest.approx([0.24, 0.18], abs=1e-6)


def test_sigma_max_schedule_restarts_with_a_new_learn_call():
    model = _model(sigma_max_final=0.12, sigma_hold_fraction=0.0)
    model.learn(64)
    record = _SigmaMaxAtRollouts()
    model.learn(64, callback=record)  # reset_num_timesteps=True: a new schedule
    assert record.seen == pytest.approx([0.24, 0.18], abs=1e-6)


# ---------------------------------------------------------------------- checkpoints


# ---------------------------------------------------------------------- policy instances


# ---------------------------------------------------------------------- SB3 integration


# ---------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("final", [0.05, 0.3])
def test_sigma_max_final_outside_the_sigma_range_is_refused(final):
    with pytest.raises(ValueError, match="sigma_max_final"):
        _model(sigma_max_final=final)
