"""The on-policy core: ReinFlow on it is ReinFlow as before, and the buffer of named fields."""

import functools
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from reinflow_reference import CONFIGS, PATH, run

from flowrl.algos import (
    DPPO,
    FPO,
    ChainRolloutBuffer,
    FieldRolloutBuffer,
    OnPolicyCore,
    PolicyFlow,
    ReinFlow,
)

DATA = Path(__file__).parent / "data"
STORED_ACTIONS = DATA / "reinflow_before_core_actions.npy"  # written with the checkpoint


def _checkpoint_and_its_actions() -> tuple[ReinFlow, np.ndarray]:
    """The pre-core checkpoint, loaded, and its deterministic actions on fixed observations."""
    model = ReinFlow.load(DATA / "reinflow_before_core.zip", env=gym.make("Pendulum-v1"))
    obs = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    action, _ = model.predict(obs, deterministic=True)
    return model, action


@functools.cache
def same_float_kernels_as_the_reference_machine() -> bool:
    """Whether this machine's float kernels round as those of the machine that wrote the data.

    A CPU with other vector units (e.g. AVX-512 against AVX2) runs other kernels for the same
    torch build, whose float32 sums round differently in the last bit. The canary is the
    stored checkpoint's actions: bit-equal here only where the kernels are the same ones.
    """
    _, action = _checkpoint_and_its_actions()
    return np.array_equal(action, np.load(STORED_ACTIONS))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reinflow_on_the_core_is_bit_identical(name):
    """Four updates of each configuration give the weights ReinFlow gave before.

    The reference was written by ReinFlow before it moved onto the core (see
    ``reinflow_reference.py``). On a machine whose float kernels round as the reference
    machine's (the canary above), every tensor of the policy (actor, reference, noise and
    value nets) and every scalar the last update logged must be equal, not close. Elsewhere
    bit-equality is not a property any code can have, and the same tensors must agree to
    float32 round-off carried through four updates (rtol 1e-4, atol 1e-6: on an AVX-512
    machine, where the canary differs in the last bit, every tensor passed these; the largest
    relative differences were in the logged sampler error, itself a round-off-sized number).
    """
    expected = torch.load(PATH, weights_only=True)[name]
    got = run(name)
    exact = same_float_kernels_as_the_reference_machine()
    for key, value in expected.items():
        assert key in got, key
        if exact:
            assert torch.equal(got[key], value), key
        else:
            torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_a_reinflow_checkpoint_from_before_the_core_loads_and_acts_the_same():
    model, action = _checkpoint_and_its_actions()
    # Bit-equal where this machine's kernels are the reference machine's (that comparison is
    # the canary above); elsewhere the same actions to float32 round-off.
    np.testing.assert_allclose(action, np.load(STORED_ACTIONS), rtol=1e-6, atol=0)
    model.learn(64)  # and trains on


def test_learners_are_thin_layers_on_the_core():
    learners = (ReinFlow, PolicyFlow, FPO, DPPO)
    assert all(issubclass(learner, OnPolicyCore) for learner in learners)
    # The update loop exists once: no learner overrides it.
    for method in ("train", "collect_rollouts", "_actor_loss", "_refresh_old_log_probs"):
        for learner in learners:
            assert method not in vars(learner), (learner.__name__, method)


def _buffer(fields, n_envs=2, size=3):
    obs_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    act_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    return FieldRolloutBuffer(size, obs_space, act_space, fields, device="cpu", n_envs=n_envs)


def test_field_buffer_stores_and_serves_its_fields():
    buffer = _buffer({"latents": (1,), "times": (4,)})
    buffer.reset()
    for step in range(3):
        buffer.add_step(
            np.full((2, 2), step, np.float32),
            torch.full((2, 1), float(step)),
            np.zeros(2, np.float32),
            np.zeros(2, bool),
            torch.zeros(2),
            torch.full((2,), -float(step), dtype=torch.float64),
            {"latents": torch.full((2, 1), 10.0 + step), "times": torch.full((2, 4), 0.5)},
        )
    assert buffer.latents.shape == (3, 2, 1) and buffer.times.shape == (3, 2, 4)
    buffer.compute_returns_and_advantage(torch.zeros(2), np.zeros(2))
    order = np.arange(6)
    (batch,) = list(buffer.get(6, order))
    # Rows are env-major after flattening (SB3's swap_and_flatten): env 0's steps 0, 1, 2 first.
    torch.testing.assert_close(batch.fields["latents"][:, 0], torch.tensor([10.0, 11, 12] * 2))
    torch.testing.assert_close(batch.actions[:, 0], torch.tensor([0.0, 1, 2] * 2))
    assert batch.old_log_prob.dtype == torch.float64
    buffer.write_rows(np.array([0, 5]), {"log_probs": torch.tensor([7.0, 8.0])})
    assert buffer.log_probs[[0, 5], 0].tolist() == [7.0, 8.0]
    buffer.write_rows(np.array([1]), {"times": torch.ones(1, 4)})
    assert buffer.times[1].tolist() == [1.0] * 4


def test_field_buffer_rejects_sb3_names_and_unknown_fields():
    with pytest.raises(ValueError, match="SB3's own"):
        _buffer({"actions": (1,)})
    buffer = _buffer({"latents": (1,)})
    buffer.reset()
    with pytest.raises(KeyError, match="unknown fields"):
        buffer.add_step(
            np.zeros((2, 2)),
            torch.zeros(2, 1),
            np.zeros(2),
            np.zeros(2, bool),
            torch.zeros(2),
            torch.zeros(2),
            {"chains": torch.zeros(2, 1)},
        )


def test_chain_buffer_is_the_field_buffer_with_chains():
    space = gym.spaces.Box(-1, 1, (2,), np.float32)
    buffer = ChainRolloutBuffer(4, space, space, num_steps=3, device="cpu")
    assert isinstance(buffer, FieldRolloutBuffer)
    assert buffer.field_shapes == {"chains": (4, 2)}
    assert buffer.chains.shape == (4, 1, 4, 2)


def test_several_ratios_per_sample_are_each_clipped_with_their_weighted_advantage():
    """(M, N) log-ratios (FPO++'s per pair, DPPO's per denoising step): the surrogate is the
    mean over all M·N entries of PPO's clipped term, each column's advantage times its weight."""
    model = ReinFlow("FlowPolicy", "Pendulum-v1", n_steps=8, batch_size=8, seed=0)
    gen = torch.Generator().manual_seed(0)
    log_ratio = 0.3 * torch.randn(5, 3, generator=gen, dtype=torch.float64)
    advantages = torch.randn(5, generator=gen, dtype=torch.float64)
    weights = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)
    columns = model._column_advantages(advantages, log_ratio, weights)
    ratio = log_ratio.exp()
    loss, _ = model._surrogate(columns, ratio, log_ratio, 0.1, torch.zeros(5))
    expected = 0.0
    for i in range(5):
        for j in range(3):
            a, r = float(advantages[i] * weights[j]), float(ratio[i, j])
            expected += -min(a * r, a * min(max(r, 0.9), 1.1))
    assert loss.item() == pytest.approx(expected / 15, rel=1e-12)
    # one ratio per sample keeps the plain form
    assert model._column_advantages(advantages, log_ratio[:, 0], None) is advantages


def test_several_ratios_per_sample_refuse_what_does_not_apply():
    model = ReinFlow("FlowPolicy", "Pendulum-v1", n_steps=8, batch_size=8, seed=0)
    advantages, log_ratio = torch.zeros(4), torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"advantage_weights must be \(2,\)"):
        model._column_advantages(advantages, log_ratio, torch.ones(3))
    with pytest.raises(ValueError, match=r"need an \(M, N\) log_ratio"):
        model._column_advantages(advantages, log_ratio[:, 0], torch.ones(2))
    with pytest.raises(ValueError, match="M = 4"):
        model._column_advantages(advantages, torch.zeros(3, 2), None)
    model.entropy_control = "clip_cov"
    with pytest.raises(ValueError, match="one log-ratio each"):
        model._column_advantages(advantages, log_ratio, None)


def test_float64_fields_keep_their_precision():
    obs_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    act_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    buffer = FieldRolloutBuffer(
        2, obs_space, act_space, {"lp": (3,), "x": (1,)}, device="cpu", float64_fields=("lp",)
    )
    buffer.reset()
    assert buffer.lp.dtype == np.float64 and buffer.x.dtype == np.float32
    with pytest.raises(ValueError, match=r"float64_fields \['nope'\]"):
        FieldRolloutBuffer(2, obs_space, act_space, {"lp": (3,)}, float64_fields=("nope",))
