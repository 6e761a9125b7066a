"""What flow policies refuse at construction: untrained shortcut K, non-Euler actors, and
pretrained actors made for another action box, with non-finite weights or from a bad file."""

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

from flowrl.data import Normalizer
from flowrl.policies import FlowActor, FlowActorConfig, FlowPolicy, FPOPolicy, PolicyFlowPolicy

POLICIES = [FlowPolicy, PolicyFlowPolicy, FPOPolicy]
OBS = spaces.Box(-1.0, 1.0, (3,), np.float32)
ACT = spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 1.0], np.float32))


def _actor(box: spaces.Box | None = ACT, **overrides) -> FlowActor:
    """A small actor with a random (non-zero) output layer, normalized for ``box``."""
    torch.manual_seed(0)
    config = FlowActorConfig(obs_dim=3, action_dim=2, width=16, depth=1, num_steps=4, **overrides)
    action_normalizer = Normalizer.box(box.low, box.high) if box is not None else None
    actor = FlowActor(config, Normalizer.identity(3), action_normalizer)
    with torch.no_grad():
        nn.init.normal_(actor.velocity_net.output.weight, std=0.5)
    return actor


def _fresh(policy_class, num_steps=None, **actor_config):
    """A policy with a fresh actor of these config fields (small by default)."""
    actor_config = dict(width=16, depth=1) | actor_config
    return policy_class(OBS, ACT, lambda _: 1e-3, actor_config=actor_config, num_steps=num_steps)


# ---------------------------------------------------------------------- shortcut step counts


@pytest.mark.parametrize("policy_class", POLICIES)
@pytest.mark.parametrize("K", [3, 16])
def test_shortcut_actor_with_an_untrained_num_steps_is_refused(policy_class, K):
    actor = _actor(shortcut=True, shortcut_max_steps=8)
    with pytest.raises(ValueError, match=rf"K={K}\b.*\(1, 2, 4, 8\)"):
        policy_class.from_pretrained(actor, OBS, ACT, num_steps=K)
    # The actor's own default K is checked too, and fresh shortcut actors alike.
    actor.config.num_steps = K
    with pytest.raises(ValueError, match=rf"K={K}\b"):
        policy_class.from_pretrained(actor, OBS, ACT)
    with pytest.raises(ValueError, match=rf"K={K}\b"):
        _fresh(policy_class, num_steps=K, shortcut=True, shortcut_max_steps=8)


@pytest.mark.parametrize("policy_class", POLICIES)
@pytest.mark.parametrize("K", [1, 2, 8])
def test_shortcut_actor_with_a_trained_num_steps_is_accepted(policy_class, K):
    actor = _actor(shortcut=True, shortcut_max_steps=8)
    policy = policy_class.from_pretrained(actor, OBS, ACT, num_steps=K)
    assert policy.num_steps == K


# ---------------------------------------------------------------------- integration method


@pytest.mark.parametrize("policy_class", POLICIES)
@pytest.mark.parametrize("method", ["midpoint", "heun"])
def test_non_euler_actor_is_refused_with_the_one_line_fix(policy_class, method):
    actor = _actor(method=method)
    with pytest.raises(ValueError, match=rf"Euler.*{method!r}") as info:
        policy_class.from_pretrained(actor, OBS, ACT)
    assert 'actor.config.method = "euler"' in str(info.value)
    with pytest.raises(ValueError, match="Euler"):
        _fresh(policy_class, method=method)
    # The fix the message gives is lossless: the policy then acts as the Euler actor does.
    actor.config.method = "euler"
    policy = policy_class.from_pretrained(actor, OBS, ACT)
    obs = torch.rand(8, 3) * 2 - 1
    with torch.no_grad():
        expected = actor.sample_normalized(obs, 4, "euler", noise=torch.zeros(8, 2))
        got = policy.ode_endpoint(obs, torch.zeros(8, 2))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------- action box


@pytest.mark.parametrize("policy_class", POLICIES)
def test_actor_trained_for_another_action_box_is_refused(policy_class, tmp_path):
    other = spaces.Box(-1.0, 1.0, (2,), np.float32)
    actor = _actor(other)
    with pytest.raises(ValueError, match="another action box") as info:
        policy_class.from_pretrained(actor, OBS, ACT)
    message = str(info.value)
    assert "low=[-1.0, -1.0], high=[1.0, 1.0]" in message  # the actor's box
    assert "low=[-2.0, 0.0], high=[2.0, 1.0]" in message  # the env's box
    actor.save(tmp_path / "bc.pt")
    with pytest.raises(ValueError, match=r"bc\.pt.*another action box"):
        policy_class.from_pretrained(tmp_path / "bc.pt", OBS, ACT)


@pytest.mark.parametrize("policy_class", POLICIES)
def test_action_box_equal_within_float_tolerance_is_accepted(policy_class):
    low = np.array([-2.0, 0.0]) + 1e-7
    high = np.array([2.0, 1.0]) * (1 + 1e-6)
    actor = FlowActor(
        FlowActorConfig(obs_dim=3, action_dim=2, width=16, depth=1),
        action_normalizer=Normalizer.box(low, high),
    )
    policy_class.from_pretrained(actor, OBS, ACT)


@pytest.mark.parametrize("policy_class", POLICIES)
def test_actor_without_a_recorded_box_is_accepted(policy_class):
    # Identity and data-range normalizers record no box (BC without an env): nothing to
    # compare, so no false alarm.
    policy_class.from_pretrained(_actor(None), OBS, ACT)
    data = np.random.default_rng(0).uniform([-1.5, 0.2], [1.0, 0.9], size=(50, 2))
    actor = FlowActor(
        FlowActorConfig(obs_dim=3, action_dim=2, width=16, depth=1),
        action_normalizer=Normalizer.from_data_range(data),
    )
    policy_class.from_pretrained(actor, OBS, ACT)


# ---------------------------------------------------------------------- finite weights


@pytest.mark.parametrize("policy_class", POLICIES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_parameter_is_refused_naming_the_checkpoint(policy_class, bad, tmp_path):
    actor = _actor()
    with torch.no_grad():
        actor.velocity_net.output.weight[0, 0] = bad
    path = tmp_path / "diverged.pt"
    actor.save(path)
    with pytest.raises(ValueError, match=r"diverged\.pt.*'velocity_net\.output\.weight'"):
        policy_class.from_pretrained(path, OBS, ACT)
    with pytest.raises(ValueError, match=r"FlowActor.*'velocity_net\.output\.weight'"):
        policy_class.from_pretrained(actor, OBS, ACT)


@pytest.mark.parametrize("policy_class", POLICIES)
def test_non_finite_buffer_is_refused(policy_class):
    actor = _actor()
    actor.obs_normalizer.shift[1] = float("nan")
    with pytest.raises(ValueError, match=r"'obs_normalizer\.shift' \(1 of 3"):
        policy_class.from_pretrained(actor, OBS, ACT)
    # A normalizer's unset bounds are ±inf by design; NaN there is still refused.
    actor = _actor(None)
    assert torch.isinf(actor.action_normalizer.low).all()
    policy_class.from_pretrained(actor, OBS, ACT)
    actor.obs_normalizer.low[0] = float("nan")
    with pytest.raises(ValueError, match=r"'obs_normalizer\.low'"):
        policy_class.from_pretrained(actor, OBS, ACT)


# ---------------------------------------------------------------------- bad files


class _Payload:
    """An arbitrary object: unpickling it would run code a checkpoint must never run."""


@pytest.mark.parametrize("policy_class", POLICIES)
def test_missing_truncated_and_pickled_checkpoints_name_the_file(policy_class, tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        policy_class.from_pretrained(str(missing), OBS, ACT)
    good = tmp_path / "bc.pt"
    _actor().save(good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(
        ValueError,
        match=r"truncated\.pt. is not a readable FlowActor checkpoint: the file is damaged",
    ):
        policy_class.from_pretrained(str(truncated), OBS, ACT)
    pickled = tmp_path / "pickled.pt"
    torch.save({**_actor().checkpoint(), "extra": _Payload()}, pickled)
    with pytest.raises(
        ValueError,
        match=r"pickled\.pt. is not a FlowActor checkpoint: .* holds pickled objects",
    ):
        policy_class.from_pretrained(pickled, OBS, ACT)


@pytest.mark.parametrize("policy_class", POLICIES)
def test_pretrained_of_another_type_is_refused(policy_class):
    with pytest.raises(TypeError, match="pretrained must be a FlowActor"):
        policy_class.from_pretrained(_actor().checkpoint(), OBS, ACT)


@pytest.mark.parametrize("policy_class", POLICIES)
def test_actor_of_other_dims_is_refused_naming_the_checkpoint(policy_class, tmp_path):
    actor = FlowActor(FlowActorConfig(obs_dim=3, action_dim=4, width=16, depth=1))
    actor.save(tmp_path / "chunked.pt")
    with pytest.raises(ValueError, match=r"pretrained actor has .*\(3, 4\).*\(3, 2\).*chunked\.pt"):
        policy_class.from_pretrained(tmp_path / "chunked.pt", OBS, ACT)


@pytest.mark.parametrize("policy_class", POLICIES)
def test_an_sb3_model_zip_as_pretrained_says_what_it_is(policy_class, tmp_path):
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    PPO("MlpPolicy", make_vec_env("Pendulum-v1"), n_steps=16, batch_size=16).save(
        tmp_path / "model.zip"
    )
    with pytest.raises(ValueError, match=r"model.zip' is a Stable-Baselines3 model .zip .*bc.pt"):
        policy_class.from_pretrained(str(tmp_path / "model.zip"), OBS, ACT)
