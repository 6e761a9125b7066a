"""Every on-policy learner on the core: its invariants, its errors and the SB3 surface.

Each test runs for every learner in ``LEARNERS`` (a new learner joins by adding a row):
the first-minibatch ratio is 1 for K = 1, 2, 4, 8; NaN losses and changed weights are
refused; checkpoints round-trip and foreign ones are refused; SB3's vec envs, VecNormalize,
callbacks, progress bar, TensorBoard and ``evaluate_policy`` work.
"""

import glob
import importlib
import os

import gymnasium as gym
import numpy as np
import pytest
import torch
from learner_helpers import (
    LEARNERS,
    assert_same_state,
    pendulum_actor,
    rollout,
    short_pendulum,
    state,
    update,
)
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CheckpointCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

importlib.import_module("flowrl.envs")  # registers MultiGoal-v0

KS = [1, 2, 4, 8]


NAMES = sorted(LEARNERS)


def _model(name, env="Pendulum-v1", K=2, n_steps=32, policy_kwargs=None, **kw):
    spec = LEARNERS[name]
    return spec.cls(
        spec.alias,
        env,
        n_steps=n_steps,
        batch_size=16,
        n_epochs=2,
        seed=kw.pop("seed", 0),
        policy_kwargs=spec.policy_kwargs(K) if policy_kwargs is None else policy_kwargs,
        **{**spec.algo_kwargs, **kw},
    )


# ---------------------------------------------------------------------- the update's invariants


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("K", KS)
def test_first_minibatch_ratio_is_one(name, K):
    model = _model(name, K=K)
    model.learn(64)
    # Two updates moved the actor away from its frozen reference.
    assert any(
        not torch.equal(a, r)
        for a, r in zip(
            model.policy.actor.parameters(), model.policy.reference.parameters(), strict=True
        )
    )
    values = update(model)
    assert values["flow/ratio_first_minibatch"] == 1.0
    assert values["flow/ratio_first_minibatch_max_deviation"] < 1e-12
    assert values["flow/sampler_log_prob_max_error"] < 1e-4
    assert values["flow/num_steps"] == K
    assert np.isfinite(values["train/value_loss"])
    assert np.isfinite(values["train/approx_kl"])
    assert values["flow/ratio_mean"] != 1.0  # later minibatches see the moved policy


@pytest.mark.parametrize("name", NAMES)
def test_time_limit_truncation_bootstraps_with_the_value(name):
    model = _model(name, short_pendulum(16), n_steps=32, gamma=0.9)
    with torch.no_grad():  # V ≡ 1000, far from Pendulum's rewards in [-16.3, 0]
        model.policy.value_net.net[-1].weight.zero_()
        model.policy.value_net.net[-1].bias.fill_(1000.0)
    rollout(model)
    rewards = model.rollout_buffer.rewards[:, 0]
    truncated = [15, 31]  # the last step of each 16-step episode
    assert np.all(rewards[truncated] > 0.9 * 1000 - 17)
    assert np.all(np.delete(rewards, truncated) <= 0)


@pytest.mark.parametrize("name", NAMES)
def test_weights_changed_between_refresh_and_first_minibatch_raises(name, monkeypatch):
    model = _model(name)
    rollout(model)
    refresh = model._refresh_old_log_probs

    def refresh_then_perturb(indices):
        error = refresh(indices)
        with torch.no_grad():
            model.policy.actor.velocity_net.output.bias.add_(0.01)
        return error

    monkeypatch.setattr(model, "_refresh_old_log_probs", refresh_then_perturb)
    with pytest.raises(RuntimeError, match="first minibatch"):
        model.train()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("where", ["advantages", "value_bias"])
def test_nan_loss_is_refused_and_not_applied(name, where):
    model = _model(name)
    rollout(model)
    if where == "advantages":
        model.rollout_buffer.advantages[:] = np.nan
    else:
        with torch.no_grad():
            model.policy.value_net.net[-1].bias.fill_(float("nan"))
    before = state(model.policy)
    with pytest.raises(FloatingPointError, match="not applied"):
        model.train()
    after = state(model.policy)
    for key in before:
        if not key.startswith("value_net"):  # the NaN we put there
            assert torch.equal(before[key], after[key]), key
    assert len(model.policy.optimizer.state) == 0  # no optimizer step was taken


@pytest.mark.parametrize("name", NAMES)
def test_loss_options(name):
    model = _model(name, n_steps=64, clip_range_vf=0.2, bc_coef=0.5, ent_coef=0.01, target_kl=1e-6)
    model.learn(64)
    values = update(model)
    assert values["flow/ratio_first_minibatch"] == 1.0
    assert values["train/bc_loss"] > 0  # the actor left its reference after the first step
    assert np.isfinite(values["train/value_loss"])
    # target_kl this small stops each update within its first epoch.
    assert model._n_updates == 2


@pytest.mark.parametrize("name", NAMES)
def test_critic_warmup_trains_only_the_value_net(name):
    model = _model(name, critic_warmup_updates=2, n_steps=32)
    policy0 = state(model.policy)
    model.learn(64)  # two rollouts, two updates: both warm-up
    policy1 = state(model.policy)
    for key in policy0:
        assert torch.equal(policy0[key], policy1[key]) == (not key.startswith("value_net")), key
    model.learn(32, reset_num_timesteps=False)  # third update: the actor moves
    assert any(
        not torch.equal(v, policy1[k])
        for k, v in state(model.policy).items()
        if k.startswith("actor.")
    )


@pytest.mark.parametrize("name", NAMES)
def test_critic_full_epochs_trains_the_value_net_past_a_kl_stop(name):
    """target_kl stops the actor after its first minibatch either way; with
    critic_full_epochs the value net goes on for both epochs (4 minibatches, not 1)."""
    trained = {}
    for full in (False, True):
        model = _model(name, n_steps=32, target_kl=1e-6, critic_full_epochs=full)
        model.learn(32)  # one rollout, one update
        trained[full] = model
        assert model._n_updates == (2 if full else 1)  # epochs the loop ran
    stopped, full = state(trained[False].policy), state(trained[True].policy)
    for key in stopped:
        assert torch.equal(stopped[key], full[key]) == (not key.startswith("value_net")), key
    steps = lambda m: max(s["step"] for s in m.policy.critic_optimizer.state.values())  # noqa: E731
    assert (float(steps(trained[False])), float(steps(trained[True]))) == (1.0, 4.0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(batch_size=1), "batch_size"),
        (dict(policy_kwargs=dict(num_steps=0)), "num_steps"),
        (dict(policy_kwargs=dict(sigma_min=0.3, sigma_max=0.1)), "sigma_min <= sigma_max"),
        (dict(policy_kwargs=dict(initial_std=-1.0)), "initial_std"),
    ],
)
def test_bad_arguments(name, kwargs, match):
    spec = LEARNERS[name]
    error = ValueError
    if "sigma_min" in kwargs.get("policy_kwargs", {}) and not spec.noise_bounds:
        error, match = TypeError, "unknown policy_kwargs"  # FPO's policy has no noise model
    with pytest.raises(error, match=match):
        spec.cls(spec.alias, "Pendulum-v1", **{**spec.algo_kwargs, **kwargs})


# ---------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name", NAMES)
def test_save_load_without_pretrained_file(name, tmp_path):
    actor_path = tmp_path / "bc.pt"
    pretrained = pendulum_actor()
    pretrained.save(actor_path)
    spec = LEARNERS[name]
    model = _model(name, policy_kwargs={**spec.policy_kwargs(2), "pretrained": str(actor_path)})
    model.learn(64)
    os.remove(actor_path)
    model.save(tmp_path / "m.zip")
    loaded = spec.cls.load(tmp_path / "m.zip")
    assert type(loaded.policy) is spec.policy_cls
    obs = np.stack([model.observation_space.sample() for _ in range(16)])
    np.testing.assert_array_equal(
        model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0]
    )
    assert_same_state(state(model.policy), state(loaded.policy))
    for attr in ("optimizer", "critic_optimizer"):  # Adam moments travel too
        ours = getattr(model.policy, attr).state_dict()["state"]
        theirs = getattr(loaded.policy, attr).state_dict()["state"]
        assert ours.keys() == theirs.keys() and len(ours) > 0, attr
        for key in ours:
            for item in ours[key]:
                assert torch.equal(ours[key][item], theirs[key][item]), (attr, key, item)
    # The reference is still the pretrained flow (not a fresh net, not the trained actor).
    assert_same_state(state(pretrained), state(loaded.policy.reference))
    # Learner options travel too, and it trains on.
    for key in spec.algo_kwargs:
        assert getattr(loaded, key) == spec.algo_kwargs[key]
    loaded.set_env(make_vec_env("Pendulum-v1", n_envs=1, seed=1))
    loaded.learn(32)
    assert loaded.num_timesteps == 32


@pytest.mark.parametrize("name", NAMES)
def test_checkpoints_of_other_algorithms_are_refused(name, tmp_path):
    ppo = PPO("MlpPolicy", "Pendulum-v1", n_steps=64, policy_kwargs=dict(net_arch=[8]))
    ppo.save(tmp_path / "ppo.zip")
    spec = LEARNERS[name]
    with pytest.raises(ValueError, match="ActorCriticPolicy"):
        spec.cls.load(tmp_path / "ppo.zip")
    other = next(n for n in NAMES if LEARNERS[n].cls is not spec.cls)
    _model(other).save(tmp_path / "other.zip")
    with pytest.raises(ValueError, match=LEARNERS[other].policy_cls.__name__):
        spec.cls.load(tmp_path / "other.zip")


@pytest.mark.parametrize("name", NAMES)
def test_policies_of_other_algorithms_are_refused(name):
    spec = LEARNERS[name]
    with pytest.raises(ValueError, match="ActorCriticPolicy"):
        spec.cls(ActorCriticPolicy, "Pendulum-v1", n_steps=32, batch_size=16)
    with pytest.raises(ValueError, match="MlpPolicy"):
        spec.cls("MlpPolicy", "Pendulum-v1", n_steps=32, batch_size=16)
    other = next(LEARNERS[n] for n in NAMES if LEARNERS[n].cls is not spec.cls)
    env = gym.make("Pendulum-v1")
    foreign = other.policy_cls(env.observation_space, env.action_space, lambda _: 1e-3)
    with pytest.raises(ValueError, match=other.policy_cls.__name__):
        spec.cls(foreign, env, n_steps=32, batch_size=16)


@pytest.mark.parametrize("name", NAMES)
def test_discrete_env_is_refused(name):
    with pytest.raises(ValueError, match="Box"):
        _model(name, "CartPole-v1")


# ---------------------------------------------------------------------- policy instances


@pytest.mark.parametrize("name", NAMES)
def test_policy_instance_trains(name):
    spec = LEARNERS[name]
    env = gym.make("Pendulum-v1")
    actor = pendulum_actor()
    policy = spec.policy_cls.from_pretrained(
        actor, env.observation_space, env.action_space, value_hidden=(32,)
    )
    assert policy.num_steps == 2  # the actor's own K
    model = spec.cls(policy, env, n_steps=32, batch_size=16, n_epochs=2, seed=0)
    assert model.policy is policy
    model.learn(64)
    assert model.num_timesteps == 64
    assert_same_state(state(actor), state(model.policy.reference))
    assert update(model)["flow/ratio_first_minibatch"] == 1.0


@pytest.mark.parametrize("name", NAMES)
def test_policy_instances_that_do_not_fit_are_refused(name):
    spec = LEARNERS[name]
    pendulum = gym.make("Pendulum-v1")
    policy = spec.policy_cls.from_pretrained(
        pendulum_actor(), pendulum.observation_space, pendulum.action_space
    )
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        spec.cls(policy, gym.make("MultiGoal-v0"), n_steps=32, batch_size=16)
    with pytest.raises(ValueError, match="policy_kwargs"):
        spec.cls(policy, pendulum, n_steps=32, batch_size=16, policy_kwargs=dict(num_steps=2))
    unit_box = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    other_bounds = spec.policy_cls(pendulum.observation_space, unit_box, lambda _: 3e-4)
    with pytest.raises(ValueError, match="action"):
        spec.cls(other_bounds, pendulum, n_steps=32, batch_size=16)


# ---------------------------------------------------------------------- SB3 integration


@pytest.mark.parametrize("name", NAMES)
def test_dummy_vec_env_two_envs(name):
    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0, vec_env_cls=DummyVecEnv)
    model = _model(name, env, n_steps=16)
    model.learn(64)
    assert model.num_timesteps == 64
    assert update(model)["flow/ratio_first_minibatch"] == 1.0


@pytest.mark.parametrize("name", NAMES)
def test_subproc_vec_env_two_envs(name):
    env = make_vec_env(
        "Pendulum-v1",
        n_envs=2,
        seed=0,
        vec_env_cls=SubprocVecEnv,
        vec_env_kwargs=dict(start_method="fork"),  # forkserver re-imports torch: ~8 s
    )
    try:
        model = _model(name, env, n_steps=16)
        model.learn(64)
        assert model.num_timesteps == 64
        assert model.logger.name_to_value["flow/ratio_first_minibatch"] == 1.0
    finally:
        env.close()


@pytest.mark.parametrize("name", NAMES)
def test_vec_normalize(name):
    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    model = _model(name, env, n_steps=16)
    model.learn(64)
    assert env.obs_rms.count > 64  # statistics were updated by the rollouts
    assert update(model)["flow/ratio_first_minibatch"] == 1.0


@pytest.mark.parametrize("name", NAMES)
def test_eval_and_checkpoint_callbacks(name, tmp_path):
    eval_cb = EvalCallback(
        DummyVecEnv([short_pendulum]),
        n_eval_episodes=2,
        eval_freq=32,
        log_path=str(tmp_path / "eval"),
        best_model_save_path=str(tmp_path / "best"),
    )
    ckpt_cb = CheckpointCallback(save_freq=32, save_path=str(tmp_path / "ckpt"))
    model = _model(name, short_pendulum())
    model.learn(64, callback=[eval_cb, ckpt_cb])
    evaluations = np.load(tmp_path / "eval" / "evaluations.npz")
    assert evaluations["results"].shape == (2, 2)
    assert np.isfinite(evaluations["results"]).all()
    zips = sorted(glob.glob(str(tmp_path / "ckpt" / "*.zip")))
    assert len(zips) == 2
    assert LEARNERS[name].cls.load(zips[-1]).num_timesteps == 64
    assert os.path.exists(tmp_path / "best" / "best_model.zip")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.filterwarnings("ignore::tqdm.TqdmExperimentalWarning")
def test_progress_bar(name):
    model = _model(name, short_pendulum())
    model.learn(64, progress_bar=True)
    assert model.num_timesteps == 64


@pytest.mark.parametrize("name", NAMES)
def test_tensorboard_scalars(name, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = _model(name, short_pendulum(), tensorboard_log=str(tmp_path))
    # Three rollouts: SB3 dumps before each update, so the first update's scalars and the
    # finished 16-step episodes are written at the second and third dumps.
    model.learn(96)
    runs = glob.glob(str(tmp_path / f"{LEARNERS[name].cls.__name__}_*"))
    assert len(runs) == 1
    events = EventAccumulator(runs[0], size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {
        "flow/sigma_mean",
        "flow/ratio_mean",
        "flow/ratio_first_minibatch",
        "train/clip_fraction",
        "train/approx_kl",
        "train/entropy_loss",
        "train/neg_log_prob_mean",
        "train/log_prob_adv_cov_mean",
        "rollout/ep_rew_mean",
    }
    expected |= {f"train/{loss}_loss" for loss in ("bc", *LEARNERS[name].cls.extra_loss_names)}
    assert expected <= tags, sorted(expected - tags)
    assert [e.value for e in events.Scalars("flow/ratio_first_minibatch")] == [1.0, 1.0]


@pytest.mark.parametrize("name", NAMES)
def test_evaluate_policy_finite(name):
    env = short_pendulum()
    model = _model(name, env)
    model.learn(32)
    mean, std = evaluate_policy(model, env, n_eval_episodes=2)
    assert np.isfinite(mean) and np.isfinite(std)
    assert mean < 0  # Pendulum rewards are never positive


@pytest.mark.parametrize("name", NAMES)
def test_multigoal(name):
    model = _model(name, "MultiGoal-v0", K=4)
    model.learn(64)
    assert update(model)["flow/ratio_first_minibatch"] == 1.0
    actions, _ = model.predict(np.zeros((5, 2), dtype=np.float32), deterministic=True)
    assert actions.shape == (5, 2)
    assert np.all(np.abs(actions) <= 1.0)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_parameters(name):
    def trained(seed):
        model = _model(name, seed=seed)
        model.learn(64)
        return state(model.policy)

    first, second = trained(3), trained(3)
    assert_same_state(first, second)
    other = trained(4)
    assert any(not torch.equal(first[k], other[k]) for k in first)
