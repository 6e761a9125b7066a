"""SB3 habits for every on-policy learner: top-level imports, net_arch / activation_fn,
unknown policy_kwargs, conflicts with a pretrained actor, learning-rate schedules for the
critic, and observations normalized twice."""

import subprocess
import sys
import warnings

import pytest
import torch
from learner_helpers import LEARNERS, pendulum_actor
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

import flowrl


def env(n=1):
    return make_vec_env("Pendulum-v1", n_envs=n, seed=0)


def build(name, venv=None, **policy_kwargs):
    learner = LEARNERS[name]
    kwargs = {**learner.policy_kwargs(2), **policy_kwargs}
    kwargs = {key: value for key, value in kwargs.items() if value is not None}  # None: unset
    return learner.cls(
        learner.alias,
        venv if venv is not None else env(),
        policy_kwargs=kwargs,
        n_steps=16,
        batch_size=8,
        n_epochs=1,
        seed=0,
        **learner.algo_kwargs,
    )


# ---------------------------------------------------------------------- imports


@pytest.mark.parametrize("name", [n for n in flowrl.__all__ if n != "__version__"])
def test_public_classes_import_from_the_top(name):
    module = __import__("flowrl", fromlist=[name])
    assert getattr(module, name).__name__ == name


def test_import_flowrl_stays_light():
    code = (
        "import sys, flowrl; heavy = [m for m in ('stable_baselines3', 'jax', 'triton', "
        "'mujoco') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------- net_arch, activation_fn


@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_net_arch_list_sets_the_velocity_net_and_the_critic(learner):
    policy = build(learner, actor_config=None, value_hidden=None, net_arch=[24, 24, 24]).policy
    assert (policy.actor.config.width, policy.actor.config.depth) == (24, 3)
    assert policy.value_hidden == (24, 24, 24)
    widths = [m.out_features for m in policy.value_net.modules() if isinstance(m, nn.Linear)]
    assert widths == [24, 24, 24, 1]


@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_net_arch_dict_and_activation_fn(learner):
    policy = build(
        learner,
        actor_config=None,
        value_hidden=None,
        net_arch=dict(pi=[16, 16], vf=[8]),
        activation_fn=nn.Tanh,
    ).policy
    assert (policy.actor.config.width, policy.actor.config.depth) == (16, 2)
    assert policy.actor.config.act == "tanh" and policy.value_hidden == (8,)
    assert any(isinstance(m, nn.Tanh) for m in policy.actor.velocity_net.modules())
    assert not any(isinstance(m, nn.Mish) for m in policy.actor.velocity_net.modules())
    assert any(isinstance(m, nn.Tanh) for m in policy.value_net.modules())


@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_activation_fn_round_trips_through_save_and_load(learner, tmp_path):
    model = build(
        learner, actor_config=None, value_hidden=None, activation_fn=nn.ReLU, net_arch=dict(vf=[8])
    )
    model.save(tmp_path / "model.zip")
    loaded = LEARNERS[learner].cls.load(tmp_path / "model.zip")
    assert loaded.policy.actor.config.act == "relu" and loaded.policy.value_act == "relu"
    assert any(isinstance(m, nn.ReLU) for m in loaded.policy.value_net.modules())
    obs = torch.randn(5, 3)
    assert torch.equal(model.policy.predict_values(obs), loaded.policy.predict_values(obs))


BAD_ARCH = [
    (dict(net_arch=[64, 32]), ValueError, r"pi must repeat one width"),
    (dict(net_arch=dict(pi=[16], qf=[8])), ValueError, r"net_arch takes the keys 'pi' and 'vf'"),
    (
        dict(net_arch=[16, 16], actor_config=dict(width=32)),
        ValueError,
        r"net_arch pi sets width=16",
    ),
    (
        dict(net_arch=dict(vf=[8]), value_hidden=(16,)),
        ValueError,
        r"vf=\[8\] contradicts value_hidden",
    ),
    (dict(activation_fn=nn.Sigmoid), ValueError, r"Sigmoid.* is not supported; use nn.ReLU"),
    (
        dict(ortho_init=True),
        TypeError,
        r"unknown policy_kwargs \['ortho_init'\]; its options are .*actor_config",
    ),
    (
        dict(log_std_init=-1.0, squash_output=True),
        TypeError,
        r"\['log_std_init', 'squash_output'\]",
    ),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_ARCH, ids=[m for *_, m in BAD_ARCH])
@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_architecture_errors_name_the_valid_knobs(learner, kwargs, error, match):
    base = {"actor_config": None, "value_hidden": None, **kwargs}
    with pytest.raises(error, match=match):
        build(learner, **base)


# ---------------------------------------------------------------------- a pretrained actor


@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_actor_config_contradicting_a_pretrained_actor_is_refused(learner, tmp_path):
    actor = pendulum_actor()  # width 32, depth 1
    actor.save(tmp_path / "bc.pt")
    for pretrained in (actor, str(tmp_path / "bc.pt")):
        with pytest.raises(ValueError, match=r"width=64 \(the actor has 32\).*would be ignored"):
            build(learner, pretrained=pretrained, actor_config=dict(width=64))
        with pytest.raises(ValueError, match=r"net_arch|width"):
            build(learner, pretrained=pretrained, actor_config=None, net_arch=dict(pi=[8, 8]))
    # Fields equal to the checkpoint's are harmless.
    model = build(learner, pretrained=actor, actor_config=dict(width=32, depth=1))
    assert model.policy.actor.config.width == 32


@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_a_pretrained_actor_in_vecnormalize_obs_warns_of_double_normalization(learner):
    actor = pendulum_actor()  # its Gaussian normalizer was fitted on raw observations
    twice = VecNormalize(env(), norm_obs=True, norm_reward=True)
    model = build(learner, venv=twice, pretrained=actor, actor_config=None)
    with pytest.warns(UserWarning, match="observations are normalized twice"):
        model.learn(16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        once = VecNormalize(env(), norm_obs=False, norm_reward=True)
        build(learner, venv=once, pretrained=actor, actor_config=None).learn(16)
        fresh = VecNormalize(env(), norm_obs=True, norm_reward=True)  # identity normalizer
        build(learner, venv=fresh).learn(16)


# ---------------------------------------------------------------------- schedules


@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_both_learning_rates_take_schedules(learner):
    learner_row = LEARNERS[learner]
    model = learner_row.cls(
        learner_row.alias,
        env(),
        policy_kwargs=learner_row.policy_kwargs(2),
        learning_rate=lambda progress: 1e-3 * (0.5 + progress),
        critic_learning_rate=lambda progress: 2e-3 * (0.5 + progress),
        n_steps=16,
        batch_size=8,
        n_epochs=1,
        seed=0,
        **learner_row.algo_kwargs,
    )
    model.learn(64)  # 4 updates; SB3's remaining progress at the last one: 1 - 64/64
    remaining = 0.0
    actor_lr = 1e-3 * (0.5 + remaining)
    critic_lr = 2e-3 * (0.5 + remaining)  # at the start: 1.5e-3 and 3e-3
    assert model.policy.optimizer.param_groups[0]["lr"] == pytest.approx(actor_lr)
    assert model.policy.critic_optimizer.param_groups[0]["lr"] == pytest.approx(critic_lr)
    logged = model.logger.name_to_value
    assert logged["train/critic_learning_rate"] == pytest.approx(critic_lr)
