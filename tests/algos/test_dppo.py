"""DPPO and its diffusion policy: ratio 1, the per-step likelihood by hand, frozen steps,
the γ_denoise discount, bad arguments, checkpoints, and BC of a diffusion actor.

The shared learner tests (``test_on_policy_learners.py``, ``tests/reliability``) run DPPO
too, through its row ``"dppo"`` in ``learner_helpers.LEARNERS``.
"""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from learner_helpers import pendulum_actor, rollout, state, update

from flowrl.algos import DPPO, BCConfig, FlowBC
from flowrl.data.toy import mixture_centers, mixture_dataset, sample_mixture
from flowrl.metrics import mode_counts, sliced_wasserstein
from flowrl.policies import (
    DiffusionActor,
    DiffusionPolicy,
    FlowActor,
    FlowPolicy,
    FPOPolicy,
    PolicyFlowPolicy,
)

PENDULUM = gym.make("Pendulum-v1")
# Seeded: unseeded, the space draws its samples from fresh OS entropy in every session.
PENDULUM.observation_space.seed(0)


def diffusion_actor(K: int = 4, seed: int = 0) -> DiffusionActor:
    """A 'pretrained' ε-net for Pendulum: random non-zero output layer, box normalizer."""
    return pendulum_actor(seed, actor_class=DiffusionActor, num_steps=K, output_std=0.5)


def flow_actor(K: int = 4, seed: int = 0) -> FlowActor:
    """A random flow-matching actor (a velocity net) for Pendulum."""
    return pendulum_actor(seed, num_steps=K, gaussian_obs=False)


def model_for(
    K: int, ft: int, actor: FlowActor | None = None, policy_kwargs: dict | None = None, **kwargs
) -> DPPO:
    policy = DiffusionPolicy.from_pretrained(
        diffusion_actor(K) if actor is None else actor,
        PENDULUM.observation_space,
        PENDULUM.action_space,
        ft_denoising_steps=ft,
        value_hidden=(32,),
        **(policy_kwargs or {}),
    )
    return DPPO(policy, "Pendulum-v1", n_steps=32, batch_size=16, n_epochs=2, seed=0, **kwargs)


def observations(n: int = 8) -> torch.Tensor:
    return torch.as_tensor(np.stack([PENDULUM.observation_space.sample() for _ in range(n)]))


# ---------------------------------------------------------------------- ratio 1


@pytest.mark.parametrize(
    ("K", "ft", "kind"),
    [
        (1, 1, "epsilon"),
        (1, 1, "velocity"),
        (2, 1, "epsilon"),
        (2, 2, "epsilon"),
        (4, 1, "epsilon"),
        (4, 2, "epsilon"),
        (4, 4, "velocity"),
        (8, 1, "epsilon"),
        (8, 3, "epsilon"),
        (8, 8, "epsilon"),
    ],
)
def test_first_minibatch_ratio_is_one(K, ft, kind):
    model = model_for(K, ft, actor=diffusion_actor(K) if kind == "epsilon" else flow_actor(K))
    model.learn(64)  # two updates: the actor has moved away from the frozen reference
    values = update(model)
    assert values["flow/ratio_first_minibatch"] == 1.0
    assert values["flow/ratio_first_minibatch_max_deviation"] < 1e-12
    assert values["flow/sampler_log_prob_max_error"] < 1e-4
    assert (values["flow/num_steps"], values["flow/ft_denoising_steps"]) == (K, ft)
    if (K, kind) != (1, "epsilon"):
        # (From t = 0 an ε-net's data prediction divides by √ᾱ ≈ 0.03: this random net's is
        # clamped to the box on every row, so at K = 1 its one step has no gradient.)
        assert values["flow/ratio_mean"] != 1.0  # later minibatches see the moved policy
    assert model.rollout_buffer.step_log_probs.shape == (32, ft)  # flattened rows
    assert model.rollout_buffer.step_log_probs.dtype == np.float64


def test_dppo_is_a_thin_layer_on_the_core():
    for method in ("train", "collect_rollouts", "_actor_loss", "_refresh_old_log_probs"):
        assert method not in vars(DPPO), method


@pytest.mark.parametrize(
    ("policy_kwargs", "algo_kwargs"),
    [
        ({}, dict(log_prob_reduction="paper", clip_range=0.01)),  # the official reduction
        (dict(eta=0.5, sigma_max=0.5), {}),  # a DDIM chain, its stds capped
    ],
)
def test_variants_keep_ratio_one(policy_kwargs, algo_kwargs):
    model = model_for(4, 2, policy_kwargs=policy_kwargs, **algo_kwargs)
    model.learn(64)
    values = update(model)
    assert values["flow/ratio_first_minibatch"] == 1.0
    assert values["flow/ratio_mean"] != 1.0


# ---------------------------------------------------------------------- the likelihood


def _hand_alpha_bar(K: int) -> np.ndarray:
    """ᾱ at the grid times k/K, k = 0 … K, from the cosine formula and DDPM's β clip."""
    f = lambda tau: math.cos((tau + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    cont = np.array([f(1 - k / K) / f(0) for k in range(K + 1)])
    out = cont.copy()
    out[0] = cont[1] * (1 - min(1 - cont[0] / cont[1], 0.999))
    return out


def _hand_log_prob(actor: FlowActor, obs: torch.Tensor, chain: torch.Tensor, ft: int) -> np.ndarray:
    """Σ over the last ft steps of log N(a^{k+1}; DDPM posterior mean, max(√β̃, 0.1)²), by hand."""
    K = chain.shape[1] - 1
    ab = _hand_alpha_bar(K)
    obs_n = actor.normalize_obs(obs.float())
    total = np.zeros(len(obs))
    for k in range(K - ft, K):
        x = chain[:, k].float()
        t = torch.full((len(obs),), k / K)
        with torch.no_grad():
            eps = actor.velocity_net(t, x, obs_n, None).double().numpy()
        x, nxt = x.double().numpy(), chain[:, k + 1].double().numpy()
        s, u = ab[k], ab[k + 1]
        data = np.clip((x - math.sqrt(1 - s) * eps) / math.sqrt(s), -1, 1)
        beta = 1 - s / u
        mean = (math.sqrt(u) * beta * data + math.sqrt(1 - beta) * (1 - u) * x) / (1 - s)
        std = max(math.sqrt(beta * (1 - u) / (1 - s)), 0.1)
        z = (nxt - mean) / std
        total += (-0.5 * z**2 - math.log(std) - 0.5 * math.log(2 * math.pi)).sum(axis=1)
    return total


@pytest.mark.parametrize(("K", "ft"), [(1, 1), (2, 2), (4, 2), (8, 5)])
def test_chain_log_likelihood_is_the_per_step_gaussian_sum(K, ft):
    actor = diffusion_actor(K)
    policy = DiffusionPolicy.from_pretrained(
        actor, PENDULUM.observation_space, PENDULUM.action_space, ft_denoising_steps=ft
    )
    obs = observations(16)
    with torch.no_grad():
        chain, step_log_probs = policy.sample(obs, generator=torch.Generator().manual_seed(K))
    assert chain.shape == (16, K + 1, 1) and step_log_probs.shape == (16, ft)
    expected = _hand_log_prob(actor, obs, chain, ft)
    log_prob = policy.log_prob_chain(obs, chain).detach().numpy()
    np.testing.assert_allclose(log_prob, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(step_log_probs.sum(1).numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        policy.log_prob_steps(obs, chain).detach().numpy(), step_log_probs.numpy(), rtol=1e-6
    )


def test_the_last_step_is_the_data_prediction_with_the_floor_as_std():
    policy = DiffusionPolicy.from_pretrained(
        diffusion_actor(4), PENDULUM.observation_space, PENDULUM.action_space
    )
    stds = policy.step_stds()
    assert float(stds[-1]) == pytest.approx(0.1)  # DDPM's last posterior std is 0: floored
    assert torch.all(stds >= 0.1) and float(stds[0]) > 0.5  # the noisy first step keeps its own


def test_a_flow_actor_is_read_as_a_noise_predictor_through_its_path():
    flow = flow_actor(4)
    policy = DiffusionPolicy.from_pretrained(
        flow, PENDULUM.observation_space, PENDULUM.action_space
    )
    assert policy.prediction == "velocity"
    obs, x = observations(5), torch.randn(5, 1)
    mean, _ = policy.step_distribution(obs, x, 2)
    # by hand: ᾱ_s at t = 1/2, linear-path time τ = √ᾱ/(√ᾱ + √(1−ᾱ)), x_lin = x/(√ᾱ + √(1−ᾱ))
    ab = _hand_alpha_bar(4)
    s, u = ab[2], ab[3]
    c = math.sqrt(s) + math.sqrt(1 - s)
    tau = torch.full((5,), math.sqrt(s) / c)
    with torch.no_grad():
        v = flow.velocity(tau, x / c, obs)
    eps = x / c - tau[:, None] * v
    data = ((x - math.sqrt(1 - s) * eps) / math.sqrt(s)).clamp(-1, 1)
    beta = 1 - s / u
    expected = (math.sqrt(u) * beta * data + math.sqrt(1 - beta) * (1 - u) * x) / (1 - s)
    torch.testing.assert_close(mean, expected.float(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- frozen steps


def test_frozen_steps_get_no_gradient_and_stay_the_pretrained_ones():
    K, ft = 4, 2
    actor = diffusion_actor(K)
    model = model_for(K, ft, actor=actor)
    policy = model.policy
    obs = observations(16)
    chain = policy.sample(obs).chain
    policy.log_prob_chain(obs, chain).sum().backward()
    assert all(p.grad is None for p in policy.reference.parameters())
    assert not any(p.requires_grad for p in policy.reference.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.actor.parameters())
    policy.actor.zero_grad(set_to_none=True)

    pretrained = DiffusionPolicy.from_pretrained(
        actor, PENDULUM.observation_space, PENDULUM.action_space
    )
    model.learn(64)
    x = torch.randn(16, 1)
    for k in range(K):
        ours = policy.step_distribution(obs, x, k)
        theirs = pretrained.step_distribution(obs, x, k)
        same = all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
        assert same == (k < K - ft), k  # frozen steps unchanged, fine-tuned steps moved


def test_the_denoising_discount_weights_each_step_advantage():
    model = model_for(4, 3, gamma_denoising=0.9)
    torch.testing.assert_close(
        model.denoising_discount(), torch.tensor([0.81, 0.9, 1.0], dtype=torch.float64)
    )
    rollout(model)
    batch = next(model.rollout_buffer.get(8))
    terms = model._policy_terms(batch)
    assert terms.log_ratio.shape == (8, 3)
    torch.testing.assert_close(terms.advantage_weights, model.denoising_discount())


# ---------------------------------------------------------------------- predict, checkpoints


def test_deterministic_predict_is_the_noiseless_mean_chain_from_zero():
    model = model_for(4, 2)
    obs = observations(6).numpy()
    first, _ = model.predict(obs, deterministic=True)
    second, _ = model.predict(obs, deterministic=True)
    np.testing.assert_array_equal(first, second)
    assert np.all(np.abs(first) <= 2.0)
    policy = model.policy
    x = torch.zeros(6, 1)
    for k in range(4):
        x = policy.step_distribution(torch.as_tensor(obs), x, k)[0]
    np.testing.assert_allclose(first, policy.to_env_action(x).detach().numpy(), rtol=1e-6)
    stochastic = [model.predict(obs, deterministic=False)[0] for _ in range(2)]
    assert not np.array_equal(*stochastic)


def test_diffusion_actor_checkpoints_carry_their_kind(tmp_path):
    actor = diffusion_actor()
    actor.save(tmp_path / "diffusion.pt")
    loaded = DiffusionActor.load(tmp_path / "diffusion.pt")
    assert type(loaded) is DiffusionActor
    ours, theirs = actor.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    with pytest.raises(ValueError, match="DiffusionActor"):
        FlowActor.load(tmp_path / "diffusion.pt")
    policy = DiffusionPolicy.from_pretrained(
        str(tmp_path / "diffusion.pt"), PENDULUM.observation_space, PENDULUM.action_space
    )
    assert policy.prediction == "epsilon" and type(policy.actor) is DiffusionActor


def test_save_load_keeps_the_options_and_the_actions(tmp_path):
    model = model_for(4, 2, gamma_denoising=0.8, log_prob_reduction="paper")
    model.learn(32)
    model.save(tmp_path / "dppo.zip")
    loaded = DPPO.load(tmp_path / "dppo.zip")
    assert (loaded.gamma_denoising, loaded.log_prob_reduction) == (0.8, "paper")
    assert loaded.policy.ft_denoising_steps == 2 and loaded.policy.prediction == "epsilon"
    assert type(loaded.policy.actor) is DiffusionActor
    obs = observations(8).numpy()
    np.testing.assert_array_equal(
        model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0]
    )
    before, after = state(model.policy), state(loaded.policy)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("policy_cls", [FlowPolicy, PolicyFlowPolicy, FPOPolicy])
def test_flow_learners_refuse_a_diffusion_actor_when_built(policy_cls):
    with pytest.raises(TypeError, match="DiffusionActor, whose network predicts the epsilon.*DPPO"):
        policy_cls.from_pretrained(
            diffusion_actor(), PENDULUM.observation_space, PENDULUM.action_space
        )
    # and the actor itself refuses to be integrated as a flow
    with pytest.raises(TypeError, match="DiffusionActor predicts the noise"):
        diffusion_actor().velocity_fn(observations(2), 4)


# ---------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("policy_kwargs", "algo_kwargs", "match"),
    [
        (dict(num_steps=4, ft_denoising_steps=5), {}, r"ft_denoising_steps .*\[1, K = 4\]"),
        (dict(num_steps=4, ft_denoising_steps=0), {}, r"ft_denoising_steps"),
        (dict(sigma_min=0.0), {}, r"sigma_min .*must be a finite number > 0"),
        (dict(sigma_min=-0.1), {}, r"sigma_min"),
        (dict(eta=-1.0), {}, r"eta .*>= 0"),
        (dict(denoised_clip=0.0), {}, r"denoised_clip must be > 0 or None"),
        (dict(noise_clip=-3.0), {}, r"noise_clip must be > 0 or None"),
        (dict(prediction="x0"), {}, r"prediction must be"),
        ({}, dict(gamma_denoising=0.0), r"gamma_denoising .*\(0, 1\]"),
        ({}, dict(gamma_denoising=1.5), r"gamma_denoising .*\(0, 1\]"),
        ({}, dict(log_prob_reduction="mean"), r"log_prob_reduction must be 'sum' or 'paper'"),
        ({}, dict(entropy_control="clip_cov"), r"entropy_control.*one per denoising step"),
    ],
)
def test_bad_arguments_name_the_fix(policy_kwargs, algo_kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPPO("DiffusionPolicy", "Pendulum-v1", policy_kwargs=policy_kwargs, **algo_kwargs)


def test_a_prediction_that_contradicts_the_pretrained_actor_is_refused():
    with pytest.raises(ValueError, match="prediction='velocity' contradicts"):
        DiffusionPolicy.from_pretrained(
            diffusion_actor(),
            PENDULUM.observation_space,
            PENDULUM.action_space,
            prediction="velocity",
        )


# ---------------------------------------------------------------------- BC of a diffusion actor

KIND, N = "4gaussians", 2000


@pytest.fixture(scope="module")
def diffusion_bc():
    data = mixture_dataset(KIND, 4000, seed=0)
    bc = FlowBC.from_dataset(
        data,
        actor_config={"width": 128, "depth": 2},
        config=BCConfig(steps=2000, batch_size=256, lr=1e-3, ema_decay=0.995, seed=0),
        actor_class=DiffusionActor,
    )
    return bc.learn(progress_bar=False)


def test_bc_of_a_diffusion_actor_reduces_its_loss_and_samples_the_data(diffusion_bc):
    """ε-prediction BC on 4 Gaussians, sampled with 20 DDPM steps: measured loss
    0.41 → 0.24 (mean of the first and last 100 steps), SW 0.031 against a data-vs-data
    floor of 0.042 (one pair), 465–494 samples per mode (N/4 = 500)."""
    assert isinstance(diffusion_bc.actor_ema, DiffusionActor)
    first, last = np.mean(diffusion_bc.losses[:100]), np.mean(diffusion_bc.losses[-100:])
    assert last < 0.75 * first
    with torch.no_grad():
        samples = diffusion_bc.actor_ema.sample(
            torch.zeros(N, 1), num_steps=20, generator=torch.Generator().manual_seed(0)
        )
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    sw = sliced_wasserstein(samples, sample_mixture(KIND, N, seed=300), generator=gen())
    floor = sliced_wasserstein(
        sample_mixture(KIND, N, seed=100), sample_mixture(KIND, N, seed=200), generator=gen()
    )
    counts = mode_counts(samples, mixture_centers(KIND), radius=0.3)
    print(f"loss {first:.3f} -> {last:.3f}, SW {sw:.4f} (floor {floor:.4f}), modes {counts}")
    assert sw <= 3 * floor
    assert counts.min() >= 0.6 * N / 4


def test_a_diffusion_bc_checkpoint_resumes_as_a_diffusion_actor(tmp_path):
    data = mixture_dataset(KIND, 256, seed=0)
    bc = FlowBC.from_dataset(
        data,
        actor_config={"width": 16, "depth": 1},
        config=BCConfig(steps=10, batch_size=32, seed=0),
        actor_class=DiffusionActor,
    )
    bc.learn(5, progress_bar=False, checkpoint_path=tmp_path / "bc.ckpt")
    resumed = FlowBC.load_checkpoint(tmp_path / "bc.ckpt", data)
    assert type(resumed.actor) is DiffusionActor
    bc.learn(10, progress_bar=False)
    resumed.learn(10, progress_bar=False)
    assert bc.losses == resumed.losses
