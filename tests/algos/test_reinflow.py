"""ReinFlow's own parts: the chain buffer, the σ_max schedule, the log-prob reductions.

What every on-policy learner shares (ratio 1, NaN refusal, checkpoints, the SB3 surface) is
tested for ReinFlow in ``test_on_policy_learners.py``.
"""

import math

import numpy as np
import pytest
import torch
from learner_helpers import assert_same_state, rollout, state, update
from stable_baselines3.common.callbacks import BaseCallback

from flowrl.algos import ChainRolloutBuffer, ReinFlow
from flowrl.algos.reinflow import PAPER_LOG_PROB_BOUNDS


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
    original = model.policy.evaluate_chain

    def shifted(obs, chain):
        log_prob, entropy, values = original(obs, chain)
        return log_prob + 0.1, entropy, values

    model.policy.evaluate_chain = shifted
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


# ---------------------------------------------------------------------- the paper's reduction


def _paper_model(K=2, initial_std=1.0, sigma=(0.10, 0.24), **kw):
    policy_kwargs = _kwargs(K, initial_std=initial_std, sigma_min=sigma[0], sigma_max=sigma[1])
    return _model(K=K, log_prob_reduction="paper", policy_kwargs=policy_kwargs, **kw)


def test_paper_reduction_arithmetic():
    # K = 4, Da = 1: (K+1)·Da = 5 terms with a random a⁰, K·Da = 4 with a⁰ = 0.
    assert PAPER_LOG_PROB_BOUNDS == (-1.0, 1.0)
    new = torch.tensor([30.0, -30.0, 4.0, 2.0, -5.5], dtype=torch.float64)
    old = torch.tensor([0.0, 0.0, -2.5, 2.0, -4.0], dtype=torch.float64)
    drawn = _paper_model(K=4, initial_std=1.0)
    torch.testing.assert_close(
        drawn.reduce_log_prob(new), torch.tensor([1.0, -1.0, 0.8, 0.4, -1.0]).double()
    )
    torch.testing.assert_close(
        drawn._log_ratio(new, old), torch.tensor([1.0, -1.0, 1.3, 0.0, -0.2]).double()
    )
    fixed = _paper_model(K=4, initial_std=0.0)
    torch.testing.assert_close(
        fixed.reduce_log_prob(new), torch.tensor([1.0, -1.0, 1.0, 0.5, -1.0]).double()
    )


def _means_chain(policy, obs, a0, offsets):
    """A chain a⁰ … a^K whose step k lands ``offsets[k]``·σ away from its Gaussian's mean."""
    states = [a0]
    for k, offset in enumerate(offsets):
        mean, std = policy.step_distribution(obs, states[-1], k)
        states.append(mean + offset * std)
    return torch.stack(states, dim=1)


def test_paper_log_prob_equals_an_independent_mean_over_k_plus_1_terms_with_the_clamp():
    """The paper's value on a hand-made case: (log N(a⁰; 0, I) + Σ_k log N(a^{k+1}; μ_k, σ_k²))
    / ((K+1)·Da), clamped to [-1, 1], each term computed on its own with torch.distributions.

    Small σ makes the chain at its means score above 1, 10σ offsets below −1, and 2σ offsets
    in between, so the clamp binds on both sides and not in the middle.
    """
    K = 2
    model = _paper_model(K=K, sigma=(0.01, 0.02))
    policy = model.policy
    da = model.action_space.shape[0]
    obs = torch.tensor([[1.0, 0.0, 0.3], [0.2, -0.9, -1.0], [-0.6, 0.8, 2.0]])
    a0 = torch.tensor([[0.0], [0.5], [-1.2]])
    with torch.no_grad():
        chains = torch.cat(
            [
                _means_chain(policy, obs[:1], a0[:1], [0.0, 0.0]),
                _means_chain(policy, obs[1:2], a0[1:2], [10.0, -10.0]),
                _means_chain(policy, obs[2:], a0[2:], [2.0, -2.1]),
            ]
        )
        expected = []
        for b in range(3):
            total = torch.distributions.Normal(0.0, 1.0).log_prob(chains[b, 0].double()).sum()
            for k in range(K):
                mean, std = policy.step_distribution(obs[b : b + 1], chains[b : b + 1, k], k)
                step = torch.distributions.Normal(mean.double(), std.double())
                total = total + step.log_prob(chains[b : b + 1, k + 1].double()).sum()
            expected.append(total / ((K + 1) * da))
        raw = torch.stack(expected)
        assert raw[0] > 1 and raw[1] < -1 and -1 < raw[2] < 1  # the case covers the clamp
        value = model.reduce_log_prob(policy.log_prob_chain(obs, chains))
    torch.testing.assert_close(value, raw.clamp(-1.0, 1.0), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("K", "initial_std"), [(1, 1.0), (4, 1.0), (2, 0.0)])
def test_paper_reduction_has_ratio_one_on_fresh_data(K, initial_std):
    model = _paper_model(K=K, initial_std=initial_std)
    values = update(model)
    assert values["flow/ratio_first_minibatch"] == 1.0
    assert values["flow/ratio_first_minibatch_max_deviation"] == 0.0
    values = update(model)
    assert np.isfinite(values["flow/ratio_mean"]) and np.isfinite(values["train/approx_kl"])


def test_paper_entropy_is_the_mean_over_the_same_terms():
    K, c = 2, 1.0
    model = _paper_model(K=K, initial_std=c)
    rollout(model)
    model.rollout_buffer.flatten()
    batch = next(model.rollout_buffer.get(model.batch_size))
    with torch.no_grad():
        terms = model._policy_terms(batch)
        obs, chains = batch.observations, batch.fields["chains"]
        transitions = model.policy.entropy_chain(obs, chains)
        a0_entropy = 0.5 * math.log(2 * math.pi * math.e * c**2)  # Da = 1
        exact = model.policy.log_prob_chain(obs, chains)
    torch.testing.assert_close(terms.entropy, (transitions + a0_entropy) / (K + 1))
    torch.testing.assert_close(terms.log_prob, (exact / (K + 1)).clamp(-1.0, 1.0))
    torch.testing.assert_close(
        terms.log_ratio, torch.zeros_like(terms.log_ratio), atol=1e-5, rtol=0
    )


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
