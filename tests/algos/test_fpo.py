"""FPO's own parts: the stored (τ, ε) pairs, the loss-difference ratio, FPO++'s per-pair
ratios and asymmetric trust region, the two readings of the network's output, bad arguments.

What every on-policy learner shares (ratio 1 for K = 1, 2, 4, 8, NaN refusal, checkpoints,
the SB3 surface) runs for FPO and FPO++ through the ``fpo``/``fpo_pp`` rows of
``learner_helpers.LEARNERS``. Losses here are written out by hand from the velocity net,
never through :meth:`FPOPolicy.cfm_losses`.
"""

import copy
import dataclasses
import importlib

import gymnasium as gym
import numpy as np
import pytest
import torch
from learner_helpers import pendulum_actor, rollout, update

from flowrl.algos import FPO
from flowrl.algos.fpo import PAPER_CLIP_RANGE, PAPER_NUM_MC
from flowrl.policies import FlowActor, FPOPolicy

importlib.import_module("flowrl.envs")  # registers MultiGoal-v0

# The statistics the core's _actor_loss appends to.
_STATS = ("pg", "entropy", "bc", "clip", "kl", "ratio", "neg_log_prob", "cov", "cov_max")
_STATS = (*_STATS, "selected")


def _model(env="Pendulum-v1", K=2, n_steps=32, batch_size=16, seed=0, policy_kwargs=None, **kw):
    return FPO(
        "FPOPolicy",
        env,
        n_steps=n_steps,
        batch_size=batch_size,
        n_epochs=2,
        seed=seed,
        policy_kwargs=policy_kwargs
        or dict(num_steps=K, actor_config=dict(width=32, depth=1), value_hidden=(32,)),
        **{"num_mc": 4, **kw},
    )


def hand_losses(actor, obs, actions, taus, noises, prediction="velocity"):
    """ℓ_i per pair, (M, N) float64, from the velocity net on the path x = (1 − τ)ε + τa."""
    obs_n = actor.normalize_obs(obs)
    out = torch.empty(taus.shape, dtype=torch.float64)
    for i in range(taus.shape[1]):
        tau, eps = taus[:, i], noises[:, i]
        x = (1 - tau[:, None]) * eps + tau[:, None] * actions
        v = actor.velocity(tau, x, obs_n)
        target = actions - eps
        # "epsilon": the output read as the noise estimate it implies on the path
        error = v - target if prediction == "velocity" else (x - tau[:, None] * v) - eps
        out[:, i] = error.double().square().sum(dim=-1)
    return out


def _first_rows(model, rows):
    """The first ``rows`` flattened buffer rows as one minibatch, in order."""
    buffer = model.rollout_buffer
    return next(buffer.get(rows, np.arange(buffer.buffer_size * buffer.n_envs)))


def _pairs(fields):
    """The stored (τ (M, N), ε (M, N, Da)) of a minibatch."""
    return fields["taus"], fields["noises"]


def test_defaults_are_the_papers():
    model = FPO("FPOPolicy", "Pendulum-v1", n_steps=16, batch_size=8)
    assert (model.num_mc, PAPER_NUM_MC) == (8, 8)
    assert model.clip_range(1.0) == PAPER_CLIP_RANGE == 0.05
    assert (model.per_pair_ratios, model.asymmetric_trust_region) == (False, False)
    plus = FPO("FPOPolicy", "Pendulum-v1", n_steps=16, batch_size=8, variant="fpo++")
    assert (plus.per_pair_ratios, plus.asymmetric_trust_region) == (True, True)
    # the flags can be set one by one (ablations); they override the variant
    one = FPO("FPOPolicy", "Pendulum-v1", n_steps=16, batch_size=8, per_pair_ratios=True)
    assert (one.per_pair_ratios, one.asymmetric_trust_region) == (True, False)
    assert model.policy.initial_std == 1.0  # stochastic through a⁰ ~ N(0, I)


@pytest.mark.parametrize("variant", ["fpo", "fpo++"])
def test_rollout_stores_pairs_and_minus_the_mean_loss_as_log_prob(variant):
    model = _model(variant=variant)
    rollout(model)
    buffer = model.rollout_buffer
    assert buffer.taus.shape == (32, 1, 4) and buffer.noises.shape == (32, 1, 4, 1)
    assert buffer.taus.min() >= 0 and buffer.taus.max() <= 1
    batch = _first_rows(model, 32)
    f = batch.fields
    with torch.no_grad():
        losses = hand_losses(model.policy.actor, batch.observations, batch.actions, *_pairs(f))
    # The sampler's log-prob is −mean_i ℓ_i (written at the rollout, before any re-scoring).
    torch.testing.assert_close(batch.old_log_prob, -losses.mean(dim=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["fpo", "fpo++"])
def test_fresh_data_gives_log_ratio_zero_in_its_shape(variant):
    model = _model(variant=variant)
    rollout(model)
    model._refresh_old_log_probs(np.arange(32))
    batch = _first_rows(model, 16)
    with torch.no_grad():
        terms = model._policy_terms(batch)
    assert terms.log_ratio.shape == ((16, 4) if variant == "fpo++" else (16,))
    assert terms.log_ratio.dtype == torch.float64
    assert torch.equal(terms.log_ratio, torch.zeros_like(terms.log_ratio))
    assert torch.equal(terms.entropy, torch.zeros(16))  # no tractable entropy: no bonus


@pytest.mark.parametrize("variant", ["fpo", "fpo++"])
def test_ratio_is_exp_of_the_hand_computed_loss_difference_after_an_update(variant):
    model = _model(variant=variant, learning_rate=3e-3)
    rollout(model)
    rollout_actor = copy.deepcopy(model.policy.actor)
    model.train()  # re-scores ℓ_old, then steps the actor
    assert any(
        not torch.equal(p, q)
        for p, q in zip(rollout_actor.parameters(), model.policy.actor.parameters(), strict=True)
    )
    batch = _first_rows(model, 32)
    taus, noises = _pairs(batch.fields)
    with torch.no_grad():
        old = hand_losses(rollout_actor, batch.observations, batch.actions, taus, noises)
        new = hand_losses(model.policy.actor, batch.observations, batch.actions, taus, noises)
        terms = model._policy_terms(batch)
    # the stored ℓ_old are the rollout weights' losses of the stored pairs
    torch.testing.assert_close(batch.fields["old_losses"].double(), old, rtol=1e-5, atol=1e-5)
    expected = old - new if variant == "fpo++" else old.mean(dim=1) - new.mean(dim=1)
    assert expected.abs().max() > 1e-3  # the update moved the ratio
    torch.testing.assert_close(terms.log_ratio.exp(), expected.exp(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms.log_prob, -new.mean(dim=1), rtol=1e-5, atol=1e-5)


def _constructed_batch(model, log_ratio, advantages):
    """The buffer's first rows with ℓ_old set so that log ρ = ``log_ratio`` (M, N)."""
    batch = _first_rows(model, log_ratio.shape[0])
    with torch.no_grad():
        new = model.policy.evaluate(batch.observations, batch.actions, *_pairs(batch.fields)).losses
    fields = {**batch.fields, "old_losses": new + log_ratio.float()}
    return dataclasses.replace(batch, advantages=advantages, fields=fields)


def _psi_ppo(r, a, eps):
    return min(r * a, min(max(r, 1 - eps), 1 + eps) * a)


def _psi_spo(r, a, eps):
    return r * a - abs(a) / (2 * eps) * (r - 1) ** 2


@pytest.mark.parametrize(
    ("kwargs", "per_pair", "asymmetric"),
    [
        (dict(variant="fpo++"), True, True),
        (dict(variant="fpo"), False, False),
        (dict(per_pair_ratios=True), True, False),
        (dict(asymmetric_trust_region=True), False, True),
    ],
)
def test_surrogate_matches_a_hand_computation_on_a_constructed_minibatch(
    kwargs, per_pair, asymmetric
):
    """Pairs inside and outside the clip range [0.95, 1.05], positive and negative advantages:
    per-pair ratios are each clipped with their sample's advantage, SPO's penalty replaces the
    clip where the advantage is negative, and the loss is the mean over every ratio."""
    model = _model(**kwargs, normalize_advantage=False)
    rollout(model)
    log_ratio = torch.tensor(
        [
            [0.2, -0.2, 0.01, -0.01],
            [0.2, -0.2, 0.01, -0.01],
            [0.0, 0.3, -0.3, 0.04],
            [0.0, 0.3, -0.3, 0.04],
            [-0.1, 0.1, 0.1, -0.1],
            [0.07, 0.07, -0.02, 0.0],
        ],
        dtype=torch.float64,
    )
    advantages = torch.tensor([1.5, -1.5, 0.7, -0.7, 0.0, -2.0])
    batch = _constructed_batch(model, log_ratio, advantages)
    loss, *_ = model._actor_loss(batch, PAPER_CLIP_RANGE, {k: [] for k in _STATS})

    realized = (batch.fields["old_losses"].double() - _new_losses(model, batch)).detach()
    torch.testing.assert_close(realized, log_ratio, rtol=0, atol=1e-5)  # float32 storage
    rows = realized if per_pair else realized.mean(dim=1, keepdim=True)
    psi = _psi_spo if asymmetric else _psi_ppo
    expected = [
        -(_psi_ppo if a >= 0 else psi)(float(np.exp(lr)), float(a), PAPER_CLIP_RANGE)
        for a, row in zip(advantages.tolist(), rows.tolist(), strict=True)
        for lr in row
    ]
    assert loss.item() == pytest.approx(np.mean(expected), rel=1e-9, abs=1e-12)


def _new_losses(model, batch):
    with torch.no_grad():
        return model.policy.evaluate(
            batch.observations, batch.actions, *_pairs(batch.fields)
        ).losses.double()


def test_asymmetric_trust_region_pulls_negative_advantage_ratios_back():
    """Outside the clip range PPO's gradient is 0; SPO's is −A + |A|/ε·(ρ − 1) per ratio."""
    model = _model(variant="fpo++")
    eps = 0.05
    ratio = torch.tensor([[0.8, 1.2], [0.8, 1.2]], dtype=torch.float64, requires_grad=True)
    advantages = torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=torch.float64)
    loss, selected = model._surrogate(advantages, ratio, ratio.log(), eps, torch.zeros(2))
    loss.backward()
    a, r = -1.0, np.array([0.8, 1.2])
    np.testing.assert_allclose(ratio.grad[0].numpy(), (-a + abs(a) / eps * (r - 1)) / 4)
    # A > 0: ρ = 0.8 is inside PPO's active branch (min picks ρA), ρ = 1.2 is clipped
    np.testing.assert_allclose(ratio.grad[1].numpy(), [-1.0 / 4, 0.0])
    assert selected == 0.0


@pytest.mark.parametrize("prediction", ["velocity", "epsilon"])
def test_the_network_output_is_read_as_velocity_or_noise_estimate(prediction):
    env = gym.make("Pendulum-v1")
    actor = pendulum_actor()
    policy = FPOPolicy.from_pretrained(
        actor, env.observation_space, env.action_space, prediction=prediction
    )
    velocity = FPOPolicy.from_pretrained(actor, env.observation_space, env.action_space)
    obs = torch.as_tensor(np.stack([env.observation_space.sample() for _ in range(12)]))
    torch.manual_seed(1)
    with torch.no_grad():
        actions = policy.sample(obs)
        taus, noises = policy.draw_pairs(obs, 5)
        losses = policy.cfm_losses(obs, actions, taus, noises).double()
        hand = hand_losses(actor, obs.float(), actions, taus, noises, prediction)
        # sampling reads the output as the velocity either way
        torch.testing.assert_close(
            policy.deterministic_action(obs), velocity.deterministic_action(obs)
        )
    torch.testing.assert_close(losses, hand, rtol=1e-5, atol=1e-6)
    assert taus.shape == (12, 5) and noises.shape == (12, 5, 1)


def test_epsilon_prediction_trains_and_keeps_ratio_one():
    model = _model(
        policy_kwargs=dict(num_steps=2, actor_config=dict(width=32, depth=1), prediction="epsilon")
    )
    model.learn(64)
    values = update(model)
    assert values["flow/ratio_first_minibatch"] == 1.0
    assert model.policy.prediction == "epsilon"


def test_predict_is_the_ode_from_zero_and_sampling_is_random_through_a0(tmp_path):
    env = gym.make("Pendulum-v1")
    actor = pendulum_actor()
    actor.save(tmp_path / "bc.pt")
    policy = FPOPolicy.from_pretrained(
        str(tmp_path / "bc.pt"), env.observation_space, env.action_space
    )
    model = FPO(policy, env, n_steps=16, batch_size=8)
    obs = np.stack([env.observation_space.sample() for _ in range(6)])
    deterministic, _ = model.predict(obs, deterministic=True)
    reference = FlowActor.load(tmp_path / "bc.pt").sample(
        torch.as_tensor(obs), noise=torch.zeros(6, 1), clip=True
    )
    np.testing.assert_allclose(deterministic, reference.detach().numpy(), rtol=1e-6, atol=1e-6)
    torch.manual_seed(0)
    stochastic, _ = model.predict(obs, deterministic=False)
    assert not np.allclose(stochastic, deterministic)
    model.policy.initial_std = 0.0  # a⁰ = 0: nothing random is left
    np.testing.assert_array_equal(model.predict(obs, deterministic=False)[0], deterministic)


def test_update_logs_the_loss_entropy_estimate_and_zero_entropy():
    model = _model(variant="fpo++")
    model.learn(64)
    values = update(model)
    assert values["train/entropy_loss"] == 0.0
    assert values["flow/num_mc"] == 4
    assert values["flow/cfm_loss_mean"] > 0
    assert values["train/neg_log_prob_mean"] > 0  # mean ℓ: the negative ELBO surrogate
    assert values["flow/sampler_log_prob_max_error"] < 1e-4


def test_cfm_reduction_mean_divides_by_the_action_dims():
    models = {r: _model("MultiGoal-v0", cfm_reduction=r) for r in ("sum", "mean")}
    losses = torch.tensor([[2.0, 4.0], [6.0, 8.0]])
    torch.testing.assert_close(models["sum"].elbo(losses), torch.tensor([-3.0, -7.0]).double())
    torch.testing.assert_close(models["mean"].elbo(losses), torch.tensor([-1.5, -3.5]).double())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(num_mc=0), r"num_mc .* must be a positive int, got 0"),
        (dict(num_mc=-3), r"num_mc"),
        (dict(num_mc=2.5), r"num_mc"),
        (dict(num_mc=True), r"num_mc"),
        (dict(clip_range=0.0), r"clip_range must be > 0"),
        (dict(clip_range=-0.05), r"clip_range must be > 0"),
        (dict(variant="ppo"), r"variant must be one of \('fpo', 'fpo\+\+'\)"),
        (dict(cfm_reduction="max"), r"cfm_reduction must be one of \('sum', 'mean'\)"),
        (dict(per_pair_ratios="yes"), r"per_pair_ratios must be True, False or None"),
        (dict(variant="fpo++", entropy_control="clip_cov"), r"entropy_control=.*variant='fpo'"),
        (dict(asymmetric_trust_region=True, entropy_control="kl_cov"), r"entropy_control"),
        (dict(policy_kwargs=dict(prediction="x0")), r"prediction must be one of"),
        (dict(policy_kwargs=dict(initial_std=-1.0)), r"initial_std must be >= 0"),
    ],
)
def test_bad_arguments_are_refused_with_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FPO("FPOPolicy", "Pendulum-v1", n_steps=16, batch_size=8, **kwargs)


def test_entropy_control_works_with_plain_fpo():
    model = _model(entropy_control="clip_cov")
    model.learn(64)
    assert update(model)["flow/ratio_first_minibatch"] == 1.0


def test_options_travel_through_save_and_load(tmp_path):
    model = _model(
        per_pair_ratios=True,
        cfm_reduction="mean",
        policy_kwargs=dict(num_steps=2, actor_config=dict(width=32, depth=1), prediction="epsilon"),
    )
    model.learn(32)
    model.save(tmp_path / "fpo.zip")
    loaded = FPO.load(tmp_path / "fpo.zip")
    assert (loaded.variant, loaded.per_pair_ratios, loaded.asymmetric_trust_region) == (
        "fpo",
        True,
        False,
    )
    assert (loaded.num_mc, loaded.cfm_reduction, loaded.policy.prediction) == (4, "mean", "epsilon")
    obs = np.stack([model.observation_space.sample() for _ in range(8)])
    np.testing.assert_array_equal(
        model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0]
    )
