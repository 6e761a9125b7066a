"""The fast paths of the on-policy core: the batched rollout chain and opt-in torch.compile.

Correctness only (speed lives in experiments/benchmarks/throughput.py): the rollout's
batched σ and noise give the chain and likelihood of the step-by-step definition; compiled
paths agree with eager to float tolerance and keep the first-minibatch ratio at 1 to 1e-6;
where compilation is unavailable the policy warns and runs eagerly with eager's results.
"""

import copy
import warnings

import numpy as np
import pytest
import torch
from learner_helpers import update

import flowrl.compile as fc
from flowrl.algos import PolicyFlow, ReinFlow
from flowrl.compile import CompiledPaths, check_compile
from flowrl.flow.integrators import noisy_chain_log_prob, sample_noisy_chain
from flowrl.flow.times import time_grid


def _model(**kw):
    policy_kwargs = {
        "num_steps": 3,
        "actor_config": {"width": 16, "depth": 1},
        "noise_hidden": (8,),
        "value_hidden": (16,),
        **kw.pop("policy_kwargs", {}),
    }
    return ReinFlow(
        "FlowPolicy",
        "Pendulum-v1",
        n_steps=32,
        batch_size=16,
        n_epochs=2,
        seed=0,
        policy_kwargs=policy_kwargs,
        **kw,
    )


def _params(model):
    return {k: v.detach().clone() for k, v in model.policy.state_dict().items()}


# ---------------------------------------------------------------------- the batched chain


def test_tensor_std_and_given_noise_reproduce_the_step_by_step_chain():
    # σ(t, x) known per step as a (K, B, D) tensor must give the chain a callable σ gives,
    # with the same draws, and the likelihood that re-scoring the chain gives.
    K, B, D = 4, 5, 3
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(B, D, generator=gen), torch.randn(K, B, D, generator=gen)
    cond = torch.rand(B, 1, generator=gen) + 0.5

    def velocity(t, x):
        return -x * cond + t[:, None]

    def std(t, x):
        return 0.1 * cond * (1 + t[:, None]) * torch.ones_like(x)

    t, _ = time_grid(K)
    stds = torch.stack([std(t[k].expand(B), x0) for k in range(K)])
    called = sample_noisy_chain(velocity, std, x0, K, noise=noise)
    given = sample_noisy_chain(velocity, stds, x0, K, noise=noise)
    torch.testing.assert_close(given.chain, called.chain, rtol=0, atol=0)
    torch.testing.assert_close(given.log_prob, called.log_prob, rtol=0, atol=1e-12)
    replay = noisy_chain_log_prob(velocity, std, called.chain)
    torch.testing.assert_close(replay, called.log_prob, rtol=0, atol=1e-10)
    # The injected noise is exactly the given draws: a^{k+1} = mean_k + σ_k ε_k.
    x = x0
    for k in range(K):
        mean = x + velocity(t[k].expand(B), x) / K
        torch.testing.assert_close(called.chain[:, k + 1], mean + stds[k] * noise[k])
        x = called.chain[:, k + 1]


def test_noisy_chain_rejects_misshapen_noise_and_std():
    x0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="noise must have shape"):
        sample_noisy_chain(lambda t, x: x, lambda t, x: x + 1, x0, 4, noise=torch.zeros(3, 2, 3))
    with pytest.raises(ValueError, match="broadcast"):
        sample_noisy_chain(lambda t, x: x, torch.ones(5, 2, 3), x0, 4)


def test_policy_sample_draws_a0_then_all_step_noise_in_one_call():
    model = _model(policy_kwargs={"initial_std": 0.5})
    policy, obs = model.policy, torch.randn(6, 3)
    sampled = policy.sample(obs, torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    a0 = 0.5 * torch.randn(6, 1, generator=gen)
    noise = torch.randn(3, 6, 1, generator=gen)
    chain, log_prob = policy._chain_math(policy._obs_n(obs), a0, noise)
    torch.testing.assert_close(sampled.chain, chain, rtol=0, atol=0)
    torch.testing.assert_close(sampled.log_prob, log_prob, rtol=0, atol=0)
    # The rollout's likelihood is the update's scoring of the same chain (float tolerance:
    # B rows vs K·B rows through the networks).
    torch.testing.assert_close(policy.log_prob_chain(obs, chain), log_prob, rtol=0, atol=1e-4)


def test_eager_training_is_bit_reproducible():
    runs = []
    for _ in range(2):
        model = _model()
        model.learn(64)
        runs.append(_params(model))
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key


# ---------------------------------------------------------------------- compile option


def test_check_compile_values():
    assert check_compile(False) is None and check_compile(None) is None
    assert check_compile(True) == "default"
    assert check_compile("reduce-overhead") == "reduce-overhead"
    for bad in ("fast", 1, "True"):
        with pytest.raises(ValueError, match="compile must be"):
            check_compile(bad)
    with pytest.raises(ValueError, match="compile must be"):
        _model(compile="fastest")


def test_compiled_paths_agree_with_eager_and_keep_the_ratio_check():
    eager, compiled = _model(), _model(compile=True)
    assert compiled.policy.compile_mode == "default" and eager.policy.compile_mode is None
    compiled.policy.load_state_dict(eager.policy.state_dict())
    obs = torch.randn(16, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        chain = eager.policy.sample(obs, torch.Generator().manual_seed(3)).chain
        want = eager.policy.evaluate_chain(obs, chain)
        got = compiled.policy.evaluate_chain(obs, chain)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        # The rollout step from the same RNG state.
        torch.manual_seed(4)
        want_step = eager.policy(obs)
        torch.manual_seed(4)
        got_step = compiled.policy(obs)
        for a, b in zip(got_step, want_step, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            compiled.policy.sample_chain(obs, deterministic=True),
            eager.policy.sample_chain(obs, deterministic=True),
            rtol=1e-5,
            atol=1e-5,
        )
    # Training through the compiled paths: the update's first minibatch has ratio 1 (the
    # core raises above 1e-6), and the sampler's log-probs match the re-scored ones.
    values = update(compiled)
    assert values["flow/ratio_first_minibatch_max_deviation"] <= 1e-6
    assert values["flow/sampler_log_prob_max_error"] <= 1e-4
    assert compiled.policy._compiled.failed is None


def test_compile_survives_deepcopy_and_save_load(tmp_path):
    model = _model(compile=True)
    obs = torch.randn(4, 3)
    clone = copy.deepcopy(model.policy)
    assert clone._compiled.mode == "default" and clone._compiled._cache == {}
    with torch.no_grad():
        chain = model.policy.sample(obs).chain
        torch.testing.assert_close(
            clone.log_prob_chain(obs, chain), model.policy.log_prob_chain(obs, chain)
        )
    model.save(tmp_path / "m.zip")
    loaded = ReinFlow.load(tmp_path / "m.zip")
    assert loaded.policy.compile_mode == "default"
    eager = ReinFlow.load(tmp_path / "m.zip", compile=False)
    assert eager.policy.compile_mode is None


def test_unavailable_compile_warns_once_and_runs_eagerly(monkeypatch):
    eager = _model()
    model = _model(compile=True)
    model.policy.load_state_dict(eager.policy.state_dict())
    monkeypatch.setattr(fc, "compile_unavailable_reason", lambda: "no compiler in this test")
    obs, chain = torch.randn(5, 3), torch.zeros(5, 4, 1)
    with pytest.warns(RuntimeWarning, match="no compiler in this test.*eagerly"):
        got = model.policy.log_prob_chain(obs, chain)
    assert torch.equal(got, eager.policy.log_prob_chain(obs, chain))
    assert not model.policy._compiled.active
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        model.policy.evaluate_chain(obs, chain)


def test_a_failing_backend_falls_back_to_eager(monkeypatch):
    from torch._dynamo.exc import TorchDynamoException

    def broken_compile(fn, **kwargs):
        def run(*args):
            raise TorchDynamoException("backend exploded\nmore detail")

        return run

    monkeypatch.setattr(fc.torch, "compile", broken_compile)
    paths = CompiledPaths("default")
    model = _model()
    obs = torch.randn(3, 3)
    with pytest.warns(RuntimeWarning, match="TorchDynamoException: backend exploded"):
        out = paths(model.policy, "_ode_chain", model.policy._obs_n(obs))
    assert torch.equal(out, model.policy._ode_chain(model.policy._obs_n(obs)))
    assert paths.failed is not None and not paths.active


def test_compile_on_a_policy_without_compiled_paths_warns():
    with pytest.warns(RuntimeWarning, match="no compiled paths"):
        model = PolicyFlow(
            "PolicyFlowPolicy",
            "Pendulum-v1",
            n_steps=32,
            batch_size=16,
            policy_kwargs={"actor_config": {"width": 16, "depth": 1}, "num_steps": 2},
            compile=True,
        )
    assert model.policy.compile_mode is None


def test_buffer_staging_writes_numpy_on_cpu():
    model = _model()
    update(model)
    buffer = model.rollout_buffer
    assert np.all(np.isfinite(buffer.chains)) and np.abs(buffer.chains).sum() > 0
    assert np.abs(buffer.values).sum() > 0 and np.all(buffer.log_probs != 0)
    # The buffer refuses a step past its end instead of wrapping around.
    buffer.reset()
    step = dict(
        obs=np.zeros((1, 3)),
        action=torch.zeros(1, 1),
        reward=np.zeros(1),
        episode_start=np.zeros(1),
        value=torch.zeros(1),
        log_prob=torch.zeros(1, dtype=torch.float64),
        fields={},
    )
    for _ in range(buffer.buffer_size):
        buffer.add_step(**step)
    with pytest.raises(RuntimeError, match="full"):
        buffer.add_step(**step)


def test_buffer_staged_off_host_is_copied_once_before_gae():
    # What a GPU buffer does (device tensors, one host copy per rollout), simulated with
    # CPU tensors that are not views of the numpy arrays.
    from flowrl.algos.buffers import ChainRolloutBuffer

    class OffHost(ChainRolloutBuffer):
        def reset(self):
            super().reset()
            self._staged = {k: v.clone() for k, v in self._staged.items()}
            self._host_synced = False

    model = _model()
    space_obs, space_act = model.observation_space, model.action_space
    buffer = OffHost(4, space_obs, space_act, num_steps=3, device="cpu", n_envs=2)
    gen = torch.Generator().manual_seed(0)
    chains = torch.randn(4, 2, 4, 1, generator=gen)
    for t in range(4):
        buffer.add_step(
            np.full((2, 3), t, dtype=np.float32),
            chains[t, :, -1],
            np.ones(2),
            np.zeros(2),
            torch.full((2,), float(t)),
            torch.full((2,), -float(t), dtype=torch.float64),
            {"chains": chains[t]},
        )
    assert np.all(buffer.chains == 0)  # nothing reached the host arrays yet
    buffer.compute_returns_and_advantage(last_values=torch.zeros(2), dones=np.zeros(2))
    np.testing.assert_array_equal(buffer.chains, chains.numpy())
    np.testing.assert_array_equal(buffer.values, np.arange(4.0)[:, None].repeat(2, 1))
    np.testing.assert_array_equal(buffer.log_probs, -np.arange(4.0)[:, None].repeat(2, 1))
    np.testing.assert_array_equal(buffer.actions, chains[:, :, -1].numpy())
    assert buffer.returns.shape == (4, 2) and np.all(np.isfinite(buffer.advantages))
