"""FlowPolicy: the noise-injected chain's mathematics, its env face and its checkpoints."""

import importlib
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn
from torch.distributions import Normal

from flowrl.data import Normalizer
from flowrl.flow import integrate
from flowrl.policies import FlowActor, FlowActorConfig, FlowPolicy, check_spaces

# Registers MultiGoal-v0 (by name: isort cannot see envs/ → flowrl.envs).
importlib.import_module("flowrl.envs")

KS = [1, 2, 4, 8]
PENDULUM_OBS = spaces.Box(
    np.array([-1.0, -1.0, -8.0], dtype=np.float32),
    np.array([1.0, 1.0, 8.0], dtype=np.float32),
    dtype=np.float32,
)
PENDULUM_ACT = spaces.Box(-2.0, 2.0, (1,), dtype=np.float32)
MULTIGOAL_OBS = spaces.Box(-7.0, 7.0, (2,), dtype=np.float32)
MULTIGOAL_ACT = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)


def _policy(K=4, obs_space=MULTIGOAL_OBS, act_space=MULTIGOAL_ACT, **kwargs) -> FlowPolicy:
    return FlowPolicy(
        obs_space,
        act_space,
        lambda _: 3e-4,
        num_steps=K,
        actor_config=dict(width=32, depth=1),
        noise_hidden=(16,),
        value_hidden=(32,),
        **kwargs,
    )


def _randomise(policy: FlowPolicy, seed=0, velocity_std=0.5, noise_std=1.0) -> FlowPolicy:
    """Random output layers (fresh ones are zero): velocity and σ then vary with t, a and o."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer, std in (
            (policy.actor.velocity_net.output, velocity_std),
            (policy.noise_net.net[-1], noise_std),
        ):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * std)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * std)
    return policy


def _obs(space: spaces.Box, B: int, seed=0, dtype=torch.float32) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.as_tensor(
        rng.uniform(space.low, space.high, size=(B, space.shape[0])), dtype=dtype
    )


def _independent_log_prob(policy: FlowPolicy, obs: torch.Tensor, chain: torch.Tensor):
    """log N(a⁰; 0, c²I) + Σ_k log N(a^{k+1}; step_distribution(a^k, k)), by torch.distributions.

    The a⁰ term is absent when the chain starts at a fixed a⁰ = 0 (``initial_std`` c = 0).
    """
    zero = torch.zeros((), dtype=chain.dtype)
    total = torch.zeros(chain.shape[0], dtype=chain.dtype)
    if policy.initial_std > 0:
        total = Normal(zero, zero + policy.initial_std).log_prob(chain[:, 0]).sum(-1)
    for k in range(policy.num_steps):
        mean, std = policy.step_distribution(obs, chain[:, k], k)
        total = total + Normal(mean, std).log_prob(chain[:, k + 1]).sum(-1)
    return total


# ---------------------------------------------------------------------- likelihood


@pytest.mark.parametrize("K", KS)
def test_log_prob_chain_matches_independent_computation(K):
    torch.manual_seed(K)
    policy = _randomise(_policy(K))
    obs = _obs(MULTIGOAL_OBS, 64)
    with torch.no_grad():
        chain = policy.sample(obs).chain
        chain = chain + 0.05 * torch.randn_like(chain)  # off the sampler's own path too
        ours = policy.log_prob_chain(obs, chain)
        reference = _independent_log_prob(policy, obs, chain)
    assert ours.shape == (64,)
    assert reference.dtype == torch.float32
    torch.testing.assert_close(ours, reference.double(), atol=1e-5, rtol=0)
    # σ really depends on the step and the observation (the test is not about constants).
    _, std0 = policy.step_distribution(obs, chain[:, 0], 0)
    assert std0.std() > 1e-3


@pytest.mark.parametrize("K", KS)
def test_log_prob_chain_float64_exact(K):
    torch.manual_seed(K)
    policy = _randomise(_policy(K)).double()
    assert policy.dtype == torch.float64
    obs = _obs(MULTIGOAL_OBS, 32, dtype=torch.float64)
    with torch.no_grad():
        sampled = policy.sample(obs)
        assert sampled.chain.dtype == torch.float64
        ours = policy.log_prob_chain(obs, sampled.chain)
        reference = _independent_log_prob(policy, obs, sampled.chain)
    assert reference.dtype == torch.float64
    torch.testing.assert_close(ours, reference, atol=1e-10, rtol=0)
    torch.testing.assert_close(sampled.log_prob, reference, atol=1e-10, rtol=0)


def test_built_under_float64_default_dtype(float64):
    torch.manual_seed(0)
    policy = _randomise(_policy(4))
    assert policy.dtype == torch.float64
    obs = _obs(MULTIGOAL_OBS, 16, dtype=torch.float64)
    with torch.no_grad():
        sampled = policy.sample(obs)
        reference = _independent_log_prob(policy, obs, sampled.chain)
    torch.testing.assert_close(sampled.log_prob, reference, atol=1e-10, rtol=0)
    action, _ = policy.predict(obs.numpy(), deterministic=True)
    assert np.all(np.abs(action) <= 1.0)


@pytest.mark.parametrize("K", KS)
def test_sampler_log_prob_equals_log_prob_chain(K):
    torch.manual_seed(K)
    policy = _randomise(_policy(K), seed=K)
    obs = _obs(MULTIGOAL_OBS, 128, seed=K)
    with torch.no_grad():
        sampled = policy.sample(obs, generator=torch.Generator().manual_seed(1))
        rescored = policy.log_prob_chain(obs, sampled.chain)
    assert sampled.chain.shape == (128, K + 1, 2)
    assert sampled.log_prob.shape == (128,)
    torch.testing.assert_close(sampled.log_prob, rescored, atol=1e-5, rtol=0)


def test_log_prob_chain_rejects_wrong_chain_shape():
    policy = _policy(4)
    obs = _obs(MULTIGOAL_OBS, 3)
    with pytest.raises(ValueError, match=r"\(B, 5, 2\)"):
        policy.log_prob_chain(obs, torch.zeros(3, 4, 2))
    with pytest.raises(ValueError, match=r"step k"):
        policy.step_distribution(obs, torch.zeros(3, 2), 4)


@pytest.mark.parametrize("K", KS)
def test_sampled_chains_have_standard_normal_residuals(K):
    torch.manual_seed(0)
    policy = _randomise(_policy(K, initial_std=1.0))  # a⁰ ~ N(0, I) is checked too
    B = 8000  # × Da = 2: 16000 residuals per step, standard error of the mean 0.008
    obs = _obs(MULTIGOAL_OBS, B, seed=K)
    with torch.no_grad():
        chain = policy.sample(obs, generator=torch.Generator().manual_seed(10 + K)).chain
        residuals = [chain[:, 0]]  # a⁰ ~ N(0, I) itself
        for k in range(K):
            mean, std = policy.step_distribution(obs, chain[:, k], k)
            residuals.append((chain[:, k + 1] - mean) / std)
    for k, z in enumerate(residuals):
        z = z.double()
        assert abs(z.mean().item()) < 0.03, (k, z.mean().item())
        assert abs(z.var().item() - 1) < 0.05, (k, z.var().item())
    # The chain moved: the transitions are not pure noise around a constant.
    assert (chain[:, -1] - chain[:, 0]).abs().mean() > 0.1


# ---------------------------------------------------------------------- noise scale


@pytest.mark.parametrize("K", KS)
def test_step_std_bounded_and_follows_sigma_max(K):
    policy = _randomise(_policy(K), noise_std=4.0)  # large raw outputs reach both ends
    obs = _obs(MULTIGOAL_OBS, 256)
    a = torch.randn(256, 2)
    with torch.no_grad():
        stds = torch.stack([policy.step_distribution(obs, a, k)[1] for k in range(K)])
        assert stds.min() >= policy.sigma_min - 1e-7
        assert stds.max() <= 0.24 + 1e-7
        assert stds.max() - stds.min() > 0.05  # spans a good part of [σ_min, σ_max]
        policy.sigma_max.fill_(0.15)
        lowered = torch.stack([policy.step_distribution(obs, a, k)[1] for k in range(K)])
    assert lowered.max() <= 0.15 + 1e-7
    assert lowered.min() >= policy.sigma_min - 1e-7
    # σ = σ_min + (σ_max − σ_min)·sigmoid(raw): the same raw output, rescaled.
    expected = 0.10 + (stds - 0.10) * (0.15 - 0.10) / (0.24 - 0.10)
    torch.testing.assert_close(lowered, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("K", KS)
def test_entropy_chain_matches_step_stds(K):
    policy = _randomise(_policy(K))
    obs = _obs(MULTIGOAL_OBS, 16)
    with torch.no_grad():
        chain = policy.sample(obs).chain
        entropy = policy.entropy_chain(obs, chain)
        expected = torch.zeros(16, dtype=torch.float64)
        for k in range(K):
            _, std = policy.step_distribution(obs, chain[:, k], k)
            per_dim = 0.5 * torch.log(2 * math.pi * math.e * std.double().square())
            expected = expected + per_dim.sum(-1)
    assert entropy.shape == (16,)
    torch.testing.assert_close(entropy.double(), expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------- deterministic chain


@pytest.mark.parametrize("K", KS)
def test_deterministic_chain_is_the_euler_ode_from_zero(K):
    policy = _randomise(_policy(K))
    obs = _obs(MULTIGOAL_OBS, 10)
    with torch.no_grad():
        first = policy.sample_chain(obs, deterministic=True)
        second = policy.sample_chain(obs, deterministic=True)
        velocity = policy.actor.velocity_fn(policy.actor.normalize_obs(obs), K)
        expected = integrate(
            velocity, torch.zeros(10, 2), K, method="euler", return_trajectory=True
        )
        stochastic = policy.sample_chain(obs)
    assert first.shape == (10, K + 1, 2)
    assert stochastic.shape == (10, K + 1, 2)
    assert torch.equal(first, second)
    assert torch.equal(first[:, 0], torch.zeros(10, 2))
    torch.testing.assert_close(first, expected, atol=1e-6, rtol=0)
    assert (first[:, -1]).abs().max() > 1e-3  # the randomised field moved the state


# ---------------------------------------------------------------------- W2 regularizer


def test_bc_regularizer_zero_when_unchanged_positive_after_perturbation():
    torch.manual_seed(0)
    policy = _policy(4)
    # Make the reference non-trivial too (a fresh velocity net outputs 0 everywhere).
    _randomise(policy)
    policy.reference.load_state_dict(policy.actor.state_dict())
    obs = _obs(MULTIGOAL_OBS, 32)
    reg = policy.bc_regularizer(obs, generator=torch.Generator().manual_seed(0))
    assert reg.shape == (32,)
    assert torch.equal(reg, torch.zeros(32))

    with torch.no_grad():
        policy.actor.velocity_net.output.bias.add_(0.3)
    reg = policy.bc_regularizer(obs, generator=torch.Generator().manual_seed(0))
    assert (reg > 0).all()
    reg.mean().backward()
    grad = policy.actor.velocity_net.output.bias.grad
    assert grad is not None and grad.abs().sum() > 0
    assert all(p.grad is None for p in policy.reference.parameters())


def _perturbed_against_reference(policy: FlowPolicy) -> FlowPolicy:
    """A randomised reference flow and an actor that has moved away from it."""
    _randomise(policy)
    policy.reference.load_state_dict(policy.actor.state_dict())
    with torch.no_grad():
        policy.actor.velocity_net.output.bias.add_(0.3)
        policy.actor.velocity_net.output.weight.mul_(1.5)
    return policy


def test_bc_regularizer_with_a0_zero_compares_the_deterministic_actions():
    # initial_std = 0 (FlowPolicy's default): rollouts and evaluation start at a⁰ = 0, so the
    # W2 term must compare the two noiseless ODE maps from a⁰ = 0, the deployed path.
    policy = _perturbed_against_reference(_policy(4))
    assert policy.initial_std == 0
    obs = _obs(MULTIGOAL_OBS, 32)
    reg = policy.bc_regularizer(obs, generator=torch.Generator().manual_seed(0))
    zeros = torch.zeros(32, 2)
    with torch.no_grad():
        ours = policy.actor.sample_normalized(obs, 4, "euler", noise=zeros)
        ref = policy.reference.sample_normalized(obs, 4, "euler", noise=zeros)
        deployed = policy.sample_chain(obs, deterministic=True)[:, -1]
    expected = (ours - ref).square().sum(-1)
    assert (expected > 1e-4).all()
    torch.testing.assert_close(reg, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours, deployed, atol=1e-6, rtol=0)
    # With a fixed start the term does not depend on the random draw.
    other = policy.bc_regularizer(obs, generator=torch.Generator().manual_seed(7))
    assert torch.equal(reg, other)


@pytest.mark.parametrize("c", [0.0, 0.5, 1.0])
def test_bc_regularizer_draws_a0_as_rollouts_do(c):
    policy = _perturbed_against_reference(_policy(2, initial_std=c))
    obs = _obs(MULTIGOAL_OBS, 64)
    generator = torch.Generator().manual_seed(3)
    reg = policy.bc_regularizer(obs, generator=generator)
    # Independently: a⁰ = c·N(0, I) from the same seed, both flows' Euler maps from it.
    replay = torch.Generator().manual_seed(3)
    a0 = c * torch.randn(64, 2, generator=replay)
    with torch.no_grad():
        ours = policy.actor.sample_normalized(obs, 2, "euler", noise=a0)
        ref = policy.reference.sample_normalized(obs, 2, "euler", noise=a0)
    torch.testing.assert_close(reg, (ours - ref).square().sum(-1), atol=1e-6, rtol=1e-6)
    # The same start as a rollout's chain drawn with that seed (which also draws σ noise).
    chain = policy.sample(obs, generator=torch.Generator().manual_seed(3)).chain
    torch.testing.assert_close(chain[:, 0], a0)
    # One (B, Da) normal draw whatever c is, so other random streams do not shift.
    assert torch.equal(generator.get_state(), replay.get_state())


def test_bc_regularizer_fresh_policy_is_zero():
    policy = _policy(2, PENDULUM_OBS, PENDULUM_ACT)
    reg = policy.bc_regularizer(_obs(PENDULUM_OBS, 8))
    assert torch.equal(reg, torch.zeros(8))


# ---------------------------------------------------------------------- env face


@pytest.mark.parametrize(
    ("env_id", "obs_space", "act_space"),
    [("Pendulum-v1", PENDULUM_OBS, PENDULUM_ACT), ("MultiGoal-v0", MULTIGOAL_OBS, MULTIGOAL_ACT)],
)
def test_predict_deterministic_and_within_bounds(env_id, obs_space, act_space):
    env = gym.make(env_id)
    assert env.observation_space.shape == obs_space.shape
    policy = _randomise(
        _policy(4, env.observation_space, env.action_space), velocity_std=2.0, seed=1
    )
    obs = np.stack([env.observation_space.sample() for _ in range(64)])
    low, high = env.action_space.low, env.action_space.high
    first, _ = policy.predict(obs, deterministic=True)
    second, _ = policy.predict(obs, deterministic=True)
    assert first.shape == (64, act_space.shape[0])
    np.testing.assert_array_equal(first, second)
    assert np.all(first >= low) and np.all(first <= high)
    # The raw chain leaves the box, so the bounds are enforced, not merely not reached.
    assert np.any(first == high) or np.any(first == low)
    noisy_a, _ = policy.predict(obs, deterministic=False)
    noisy_b, _ = policy.predict(obs, deterministic=False)
    assert np.all(noisy_a >= low) and np.all(noisy_a <= high)
    assert not np.array_equal(noisy_a, noisy_b)
    # forward() is what rollouts send to the env (SB3's predict clips again; forward must not
    # rely on it): env actions in bounds, values (B,), log-probs (B,), chains (B, K+1, Da).
    with torch.no_grad():
        for deterministic in (True, False):
            actions, values, log_prob, chain = policy(torch.as_tensor(obs), deterministic)
            assert actions.shape == (64, act_space.shape[0])
            assert values.shape == log_prob.shape == (64,)
            assert chain.shape == (64, 5, act_space.shape[0])
            assert (actions >= torch.as_tensor(low)).all()
            assert (actions <= torch.as_tensor(high)).all()
            assert (chain[:, -1].abs() > 1).any()  # the unclipped chain left the box
    env.close()


def test_predict_single_observation():
    env = gym.make("Pendulum-v1")
    policy = _policy(2, env.observation_space, env.action_space)
    obs, _ = env.reset(seed=0)
    action, state = policy.predict(obs, deterministic=True)
    assert action.shape == (1,)
    assert state is None
    assert env.action_space.contains(action.astype(np.float32))
    env.close()


def _pendulum_actor(seed=0) -> FlowActor:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    obs = rng.uniform(PENDULUM_OBS.low, PENDULUM_OBS.high, size=(100, 3))
    actor = FlowActor(
        FlowActorConfig(obs_dim=3, action_dim=1, width=32, depth=1, num_steps=4),
        Normalizer.gaussian(obs),
        Normalizer.box(PENDULUM_ACT.low, PENDULUM_ACT.high),
    )
    with torch.no_grad():
        nn.init.normal_(actor.velocity_net.output.weight, std=0.5)
        nn.init.normal_(actor.velocity_net.output.bias, std=0.5)
    return actor


def test_from_pretrained_path_and_actor_agree(tmp_path):
    actor = _pendulum_actor()
    path = tmp_path / "bc.pt"
    actor.save(path)
    from_path = FlowPolicy.from_pretrained(str(path), PENDULUM_OBS, PENDULUM_ACT)
    from_actor = FlowPolicy.from_pretrained(actor, PENDULUM_OBS, PENDULUM_ACT)
    assert from_path.num_steps == from_actor.num_steps == 4
    obs = _obs(PENDULUM_OBS, 32).numpy()
    a_path, _ = from_path.predict(obs, deterministic=True)
    a_actor, _ = from_actor.predict(obs, deterministic=True)
    np.testing.assert_array_equal(a_path, a_actor)
    # … and both are the actor's own noiseless Euler sample from a⁰ = 0.
    with torch.no_grad():
        direct = actor.sample(
            torch.as_tensor(obs), noise=torch.zeros(32, 1), method="euler", clip=True
        )
    np.testing.assert_allclose(a_actor, direct.numpy(), atol=1e-6, rtol=0)
    assert np.ptp(a_actor) > 1e-3
    # The policy holds a copy: training it leaves the caller's actor alone.
    assert from_actor.actor is not actor
    assert from_actor.reference is not actor


def test_from_pretrained_wrong_dims():
    actor = FlowActor(FlowActorConfig(obs_dim=4, action_dim=1, width=32, depth=1))
    with pytest.raises(ValueError, match=r"\(4, 1\).*\(3, 1\)"):
        FlowPolicy.from_pretrained(actor, PENDULUM_OBS, PENDULUM_ACT)
    actor = FlowActor(FlowActorConfig(obs_dim=3, action_dim=2, width=32, depth=1))
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        FlowPolicy.from_pretrained(actor, PENDULUM_OBS, PENDULUM_ACT)


# ---------------------------------------------------------------------- bad input


def test_discrete_actions_refused():
    with pytest.raises(ValueError, match="Box"):
        check_spaces(MULTIGOAL_OBS, spaces.Discrete(3))
    with pytest.raises(ValueError, match="Box"):
        _policy(2, MULTIGOAL_OBS, spaces.Discrete(3))
    with pytest.raises(ValueError, match="Box"):
        check_spaces(MULTIGOAL_OBS, spaces.MultiDiscrete([2, 3]))
    with pytest.raises(ValueError, match="Box"):
        check_spaces(spaces.Dict({"x": MULTIGOAL_OBS}), MULTIGOAL_ACT)


def test_image_observations_refused():
    image = spaces.Box(0, 255, (8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="image") as info:
        check_spaces(image, MULTIGOAL_ACT)
    assert "encoder" in str(info.value)
    with pytest.raises(ValueError, match="encoder"):
        _policy(2, image, MULTIGOAL_ACT)


def test_check_spaces_returns_dims():
    assert check_spaces(PENDULUM_OBS, PENDULUM_ACT) == (3, 1)
    assert check_spaces(MULTIGOAL_OBS, MULTIGOAL_ACT) == (2, 2)


def test_nan_observation_refused():
    policy = _policy(2, PENDULUM_OBS, PENDULUM_ACT)
    obs = np.array([[0.5, 0.5, np.nan]], dtype=np.float32)
    with pytest.raises(ValueError, match="NaN"):
        policy.predict(obs, deterministic=True)
    with pytest.raises(ValueError, match="NaN"):
        policy.predict(obs, deterministic=False)
    with pytest.raises(ValueError, match="NaN"):
        policy.predict_values(torch.as_tensor(obs))


@pytest.mark.parametrize(("sigma_min", "sigma_max"), [(0.3, 0.2), (0.0, 0.2), (-0.1, 0.2)])
def test_bad_sigma_bounds(sigma_min, sigma_max):
    with pytest.raises(ValueError, match="sigma_min"):
        _policy(2, sigma_min=sigma_min, sigma_max=sigma_max)


@pytest.mark.parametrize("K", [0, -1, 2.0])
def test_bad_num_steps(K):
    with pytest.raises(ValueError, match="num_steps"):
        _policy(K)


# ---------------------------------------------------------------------- checkpoints


def test_policy_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    policy = _randomise(FlowPolicy.from_pretrained(_pendulum_actor(), PENDULUM_OBS, PENDULUM_ACT))
    with torch.no_grad():
        policy.sigma_max.fill_(0.2)  # a scheduled value, not the constructor's
    path = tmp_path / "policy.zip"
    policy.save(str(path))
    loaded = FlowPolicy.load(str(path))
    assert isinstance(loaded, FlowPolicy)
    assert loaded.num_steps == policy.num_steps
    assert float(loaded.sigma_max) == pytest.approx(0.2)
    ours, theirs = policy.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    obs = _obs(PENDULUM_OBS, 16).numpy()
    np.testing.assert_array_equal(
        policy.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0]
    )
    # The reference is the pretrained flow, not the randomised actor.
    assert not torch.equal(
        loaded.reference.velocity_net.output.weight, loaded.actor.velocity_net.output.weight
    )


def test_policy_from_a_frozen_ema_actor_trains_every_actor_parameter():
    # A BC trainer's EMA actor has requires_grad=False everywhere; a policy built from it
    # once fine-tuned only the noise net, silently. The copy must be trainable, and the
    # reference copy frozen.
    from flowrl.algos import BCConfig, FlowBC
    from flowrl.data.toy import mixture_dataset

    bc = FlowBC.from_dataset(
        mixture_dataset("4gaussians", 64, seed=0),
        actor_config={"width": 16, "depth": 1},
        config=BCConfig(steps=2, batch_size=16),
    )
    bc.learn(progress_bar=False)
    assert not any(p.requires_grad for p in bc.actor_ema.parameters())
    obs_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
    act_space = spaces.Box(-1, 1, (2,), np.float32)
    policy = FlowPolicy.from_pretrained(bc.actor_ema, obs_space, act_space)
    assert all(p.requires_grad for p in policy.actor.parameters())
    assert not any(p.requires_grad for p in policy.reference.parameters())
    optimised = {id(p) for group in policy.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in policy.actor.parameters())
    # The gradient of the chain likelihood reaches the velocity network.
    obs = torch.zeros(8, 1)
    policy.log_prob_chain(obs, policy.sample_chain(obs)).sum().backward()
    assert policy.actor.velocity_net.output.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("K", [1, 2, 4])
def test_shortcut_actor_is_told_the_step_size(K):
    # A shortcut actor's velocity depends on d = 1/K; the chain's likelihood must use it too.
    actor = FlowActor(
        FlowActorConfig(obs_dim=2, action_dim=2, width=16, depth=1, shortcut=True),
        Normalizer.identity(2),
        Normalizer.box(-np.ones(2), np.ones(2)),
    )
    nn.init.normal_(actor.velocity_net.output.weight, std=0.5)
    policy = FlowPolicy.from_pretrained(actor, MULTIGOAL_OBS, MULTIGOAL_ACT, num_steps=K)
    obs = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    sampled = policy.sample(obs, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(policy.log_prob_chain(obs, sampled.chain), sampled.log_prob)
    chain = policy.sample_chain(obs, deterministic=True)
    expected = integrate(
        lambda t, x: actor.velocity(t, x, obs, torch.full((16,), 1.0 / K)),
        torch.zeros(16, 2),
        K,
        return_trajectory=True,
    )
    torch.testing.assert_close(chain, expected)


# ---------------------------------------------------------------------- chain start


@pytest.mark.parametrize("initial_std", [0.0, 0.5, 1.0])
def test_initial_std_sets_the_chain_start_and_its_likelihood_term(initial_std):
    torch.manual_seed(0)
    policy = _randomise(_policy(4, initial_std=initial_std)).double()
    obs = _obs(MULTIGOAL_OBS, 2000, dtype=torch.float64)
    with torch.no_grad():
        sampled = policy.sample(obs, generator=torch.Generator().manual_seed(3))
        rescored = policy.log_prob_chain(obs, sampled.chain)
        a0 = sampled.chain[:, 0]
        reference = _independent_log_prob(policy, obs, sampled.chain)
    assert abs(float(a0.std()) - initial_std) < 0.03
    torch.testing.assert_close(sampled.log_prob, reference, atol=1e-10, rtol=0)
    torch.testing.assert_close(rescored, reference, atol=1e-10, rtol=0)
    # Deterministic actions do not depend on the option.
    twin = _randomise(_policy(4, initial_std=0.3)).double()
    twin.load_state_dict(policy.state_dict())
    small = obs[:8].numpy()
    np.testing.assert_array_equal(
        policy.predict(small, deterministic=True)[0], twin.predict(small, deterministic=True)[0]
    )


def test_initial_std_validated_and_saved(tmp_path):
    with pytest.raises(ValueError, match="initial_std"):
        _policy(4, initial_std=-1.0)
    policy = _policy(4, initial_std=0.0)
    policy.save(tmp_path / "p.zip")
    assert FlowPolicy.load(tmp_path / "p.zip").initial_std == 0.0
