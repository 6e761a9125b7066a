"""The on-policy core: ReinFlow on it is ReinFlow as before, and the buffer of named fields."""

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from reinflow_reference import CONFIGS, PATH, run

from flowrl.algos import ChainRolloutBuffer, FieldRolloutBuffer, OnPolicyCore, PolicyFlow, ReinFlow

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reinflow_on_the_core_is_bit_identical(name):
    """Four updates of each configuration give exactly the weights ReinFlow gave before.

    The reference was written by ReinFlow before it moved onto the core (see
    ``reinflow_reference.py``); every tensor of the policy (actor, reference, noise and value
    nets) and every scalar the last update logged must be equal, not close.
    """
    expected = torch.load(PATH, weights_only=True)[name]
    got = run(name)
    for key, value in expected.items():
        assert key in got, key
        assert torch.equal(got[key], value), key


def test_a_reinflow_checkpoint_from_before_the_core_loads_and_acts_the_same():
    model = ReinFlow.load(DATA / "reinflow_before_core.zip", env=gym.make("Pendulum-v1"))
    obs = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    action, _ = model.predict(obs, deterministic=True)
    np.testing.assert_array_equal(action, np.load(DATA / "reinflow_before_core_actions.npy"))
    model.learn(64)  # and trains on


def test_learners_are_thin_layers_on_the_core():
    assert issubclass(ReinFlow, OnPolicyCore) and issubclass(PolicyFlow, OnPolicyCore)
    # The update loop exists once: neither learner overrides it.
    for method in ("train", "collect_rollouts", "_actor_loss", "_refresh_old_log_probs"):
        assert method not in vars(ReinFlow) and method not in vars(PolicyFlow), method


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
