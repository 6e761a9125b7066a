"""ReinFlow: the PPO learner on the chain likelihood, its invariants and SB3 integration."""

import glob
import importlib
import os

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize
from torch import nn

from flowrl.algos import ChainRolloutBuffer, ReinFlow
from flowrl.data import Normalizer
from flowrl.policies import FlowActor, FlowActorConfig, FlowPolicy

# Registers MultiGoal-v0 (by name: isort cannot see envs/ → flowrl.envs).
importlib.import_module("flowrl.envs")

KS = [1, 2, 4, 8]


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


def _short_pendulum(steps=16):
    """Pendulum with short episodes, so that episode statistics appear within a few rollouts."""
    return Monitor(gym.make("Pendulum-v1", max_episode_steps=steps))


def _rollout(model: ReinFlow) -> None:
    """What SB3's learn does before an update: set up, then fill the buffer once."""
    _, callback = model._setup_learn(model.n_steps * model.n_envs, None)
    callback.on_training_start(locals(), globals())
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)


def _update(model: ReinFlow) -> dict:
    """One rollout and one update; the scalars the update recorded."""
    _rollout(model)
    model.train()
    return dict(model.logger.name_to_value)


def _state(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _pendulum_actor(seed=0) -> FlowActor:
    """A 'pretrained' actor for Pendulum: random non-zero output layer, box action normalizer."""
    torch.manual_seed(seed)
    env = gym.make("Pendulum-v1")
    actor = FlowActor(
        FlowActorConfig(obs_dim=3, action_dim=1, width=32, depth=1, num_steps=2),
        Normalizer.gaussian(np.stack([env.observation_space.sample() for _ in range(64)])),
        Normalizer.box(env.action_space.low, env.action_space.high),
    )
    with torch.no_grad():
        nn.init.normal_(actor.velocity_net.output.weight, std=0.3)
        nn.init.normal_(actor.velocity_net.output.bias, std=0.3)
    return actor


# ---------------------------------------------------------------------- the update's invariants


@pytest.mark.parametrize("K", KS)
def test_learn_then_first_ratio_is_one(K):
    model = _model(K=K)
    assert isinstance(model.rollout_buffer, ChainRolloutBuffer)
    assert model.rollout_buffer.chains.shape == (32, 1, K + 1, 1)
    model.learn(64)
    assert model.num_timesteps == 64
    # Two updates moved the actor away from its frozen reference.
    moved = [
        not torch.equal(a, r)
        for a, r in zip(
            model.policy.actor.parameters(), model.policy.reference.parameters(), strict=True
        )
    ]
    assert any(moved)
    values = _update(model)
    assert values["flow/ratio_first_minibatch"] == 1.0
    assert values["flow/ratio_first_minibatch_max_deviation"] == 0.0
    assert values["flow/sampler_log_prob_max_error"] < 1e-4
    assert values["flow/num_steps"] == K
    assert 0.10 <= values["flow/sigma_mean"] <= 0.24
    assert np.isfinite(values["train/value_loss"])
    assert np.isfinite(values["train/approx_kl"])


def test_time_limit_truncation_bootstraps_with_the_value():
    model = _model(_short_pendulum(16), n_steps=32, gamma=0.9)
    with torch.no_grad():  # V ≡ 1000, far from Pendulum's rewards in [-16.3, 0]
        model.policy.value_net.net[-1].weight.zero_()
        model.policy.value_net.net[-1].bias.fill_(1000.0)
    _rollout(model)
    rewards = model.rollout_buffer.rewards[:, 0]
    truncated = [15, 31]  # the last step of each 16-step episode
    assert np.all(rewards[truncated] > 0.9 * 1000 - 17)
    assert np.all(np.delete(rewards, truncated) <= 0)


def test_sampler_mismatch_raises():
    model = _model(K=4)
    _rollout(model)
    original = model.policy.log_prob_chain
    model.policy.log_prob_chain = lambda obs, chain: original(obs, chain) + 0.1
    actor_before = _state(model.policy.actor)
    with pytest.raises(RuntimeError, match="sampler") as info:
        model.train()
    assert "grid" in str(info.value)
    _assert_same_state(actor_before, _state(model.policy.actor))


def test_weights_changed_between_refresh_and_first_minibatch_raises(monkeypatch):
    model = _model(K=2)
    _rollout(model)
    refresh = model._refresh_old_log_probs

    def refresh_then_perturb(indices):
        error = refresh(indices)
        with torch.no_grad():
            model.policy.actor.velocity_net.output.bias.add_(0.01)
        return error

    monkeypatch.setattr(model, "_refresh_old_log_probs", refresh_then_perturb)
    with pytest.raises(RuntimeError, match="first minibatch"):
        model.train()


@pytest.mark.parametrize("where", ["advantages", "value_bias"])
def test_nan_loss_is_not_applied(where):
    model = _model(K=2)
    _rollout(model)
    if where == "advantages":
        model.rollout_buffer.advantages[:] = np.nan
    else:
        with torch.no_grad():
            model.policy.value_net.net[-1].bias.fill_(float("nan"))
    actor_before = _state(model.policy.actor)
    noise_before = _state(model.policy.noise_net)
    with pytest.raises(FloatingPointError, match="not applied"):
        model.train()
    _assert_same_state(actor_before, _state(model.policy.actor))
    _assert_same_state(noise_before, _state(model.policy.noise_net))
    assert len(model.policy.optimizer.state) == 0  # no optimizer step was taken


def test_log_prob_mean_reduction_and_log_ratio_clip():
    model = _model(K=4, log_prob_reduction="mean", log_ratio_clip=0.5)
    values = _update(model)
    assert values["flow/ratio_first_minibatch"] == 1.0
    assert values["flow/ratio_first_minibatch_max_deviation"] == 0.0
    values = _update(model)
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


def test_other_loss_options():
    model = _model(K=2, n_steps=64, clip_range_vf=0.2, bc_coef=0.5, ent_coef=0.01, target_kl=1e-6)
    model.learn(64)
    values = _update(model)
    assert values["flow/ratio_first_minibatch"] == 1.0
    assert values["train/bc_loss"] > 0  # the actor left its reference after the first step
    assert np.isfinite(values["train/value_loss"])
    # target_kl this small stops each update within its first epoch.
    assert model._n_updates == 2


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


def test_save_load_without_pretrained_file(tmp_path):
    actor_path = tmp_path / "bc.pt"
    pretrained = _pendulum_actor()
    pretrained.save(actor_path)
    model = _model(policy_kwargs=_kwargs(2, pretrained=str(actor_path)))
    model.learn(64)
    os.remove(actor_path)
    model.save(tmp_path / "m.zip")
    loaded = ReinFlow.load(tmp_path / "m.zip")
    obs = np.stack([model.observation_space.sample() for _ in range(16)])
    np.testing.assert_array_equal(
        model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0]
    )
    _assert_same_state(_state(model.policy), _state(loaded.policy))
    for name in ("optimizer", "critic_optimizer"):  # Adam moments travel too
        ours = getattr(model.policy, name).state_dict()["state"]
        theirs = getattr(loaded.policy, name).state_dict()["state"]
        assert ours.keys() == theirs.keys() and len(ours) > 0, name
        for key in ours:
            for field in ours[key]:
                assert torch.equal(ours[key][field], theirs[key][field]), (name, key, field)
    # The reference is still the pretrained flow (not a fresh net, not the trained actor).
    _assert_same_state(_state(pretrained), _state(loaded.policy.reference))
    assert any(
        not torch.equal(a, r)
        for a, r in zip(
            loaded.policy.actor.parameters(), loaded.policy.reference.parameters(), strict=True
        )
    )
    # It trains on.
    loaded.set_env(make_vec_env("Pendulum-v1", n_envs=1, seed=1))
    loaded.learn(32)
    assert loaded.num_timesteps == 32


def test_loading_another_algorithms_checkpoint_is_refused(tmp_path):
    ppo = PPO("MlpPolicy", "Pendulum-v1", n_steps=64, policy_kwargs=dict(net_arch=[8]))
    ppo.save(tmp_path / "ppo.zip")
    with pytest.raises(ValueError, match="ActorCriticPolicy"):
        ReinFlow.load(tmp_path / "ppo.zip")


def test_policy_of_another_algorithm_is_refused():
    with pytest.raises(ValueError, match="ActorCriticPolicy"):
        ReinFlow(ActorCriticPolicy, "Pendulum-v1", n_steps=32, batch_size=16)
    with pytest.raises(ValueError, match="MlpPolicy"):
        ReinFlow("MlpPolicy", "Pendulum-v1", n_steps=32, batch_size=16)


def test_discrete_env_is_refused():
    with pytest.raises(ValueError, match="Box"):
        _model("CartPole-v1")


# ---------------------------------------------------------------------- policy instances


def test_policy_instance_trains():
    env = gym.make("Pendulum-v1")
    actor = _pendulum_actor()
    policy = FlowPolicy.from_pretrained(
        actor, env.observation_space, env.action_space, noise_hidden=(16,), value_hidden=(32,)
    )
    assert policy.num_steps == 2  # the actor's own K
    model = ReinFlow(policy, env, n_steps=32, batch_size=16, n_epochs=2, seed=0)
    assert model.policy is policy
    model.learn(64)
    assert model.num_timesteps == 64
    _assert_same_state(_state(actor), _state(model.policy.reference))
    values = _update(model)
    assert values["flow/ratio_first_minibatch"] == 1.0


def test_policy_instance_for_other_spaces_is_refused():
    pendulum = gym.make("Pendulum-v1")
    policy = FlowPolicy.from_pretrained(
        _pendulum_actor(), pendulum.observation_space, pendulum.action_space
    )
    env = gym.make("MultiGoal-v0")
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        ReinFlow(policy, env, n_steps=32, batch_size=16)


def test_policy_instance_for_other_action_bounds_is_refused():
    env = gym.make("Pendulum-v1")
    unit_box = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    policy = FlowPolicy(env.observation_space, unit_box, lambda _: 3e-4, **_kwargs(2))
    with pytest.raises(ValueError, match="action"):
        ReinFlow(policy, env, n_steps=32, batch_size=16)


def test_policy_instance_and_policy_kwargs_is_refused():
    env = gym.make("Pendulum-v1")
    policy = FlowPolicy.from_pretrained(_pendulum_actor(), env.observation_space, env.action_space)
    with pytest.raises(ValueError, match="policy_kwargs"):
        ReinFlow(policy, env, n_steps=32, batch_size=16, policy_kwargs=dict(num_steps=2))


# ---------------------------------------------------------------------- SB3 integration


def test_dummy_vec_env_two_envs():
    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0, vec_env_cls=DummyVecEnv)
    model = _model(env, n_steps=16)
    assert model.rollout_buffer.chains.shape == (16, 2, 3, 1)
    model.learn(64)
    assert model.num_timesteps == 64
    values = _update(model)
    assert values["flow/ratio_first_minibatch"] == 1.0


def test_subproc_vec_env_two_envs():
    env = make_vec_env(
        "Pendulum-v1",
        n_envs=2,
        seed=0,
        vec_env_cls=SubprocVecEnv,
        vec_env_kwargs=dict(start_method="fork"),  # forkserver re-imports torch: ~8 s
    )
    try:
        model = _model(env, n_steps=16)
        model.learn(64)
        assert model.num_timesteps == 64
        assert model.logger.name_to_value["flow/ratio_first_minibatch"] == 1.0
    finally:
        env.close()


def test_vec_normalize():
    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    model = _model(env, n_steps=16)
    model.learn(64)
    assert model.num_timesteps == 64
    assert env.obs_rms.count > 64  # statistics were updated by the rollouts
    values = _update(model)
    assert values["flow/ratio_first_minibatch"] == 1.0


def test_eval_and_checkpoint_callbacks(tmp_path):
    eval_cb = EvalCallback(
        DummyVecEnv([_short_pendulum]),
        n_eval_episodes=2,
        eval_freq=32,
        log_path=str(tmp_path / "eval"),
        best_model_save_path=str(tmp_path / "best"),
    )
    ckpt_cb = CheckpointCallback(save_freq=32, save_path=str(tmp_path / "ckpt"))
    model = _model(_short_pendulum())
    model.learn(64, callback=[eval_cb, ckpt_cb])
    evaluations = np.load(tmp_path / "eval" / "evaluations.npz")
    assert evaluations["results"].shape == (2, 2)
    assert np.isfinite(evaluations["results"]).all()
    zips = sorted(glob.glob(str(tmp_path / "ckpt" / "*.zip")))
    assert len(zips) == 2
    restored = ReinFlow.load(zips[-1])
    assert restored.num_timesteps == 64
    assert os.path.exists(tmp_path / "best" / "best_model.zip")


@pytest.mark.filterwarnings("ignore::tqdm.TqdmExperimentalWarning")
def test_progress_bar():
    model = _model(_short_pendulum())
    model.learn(64, progress_bar=True)
    assert model.num_timesteps == 64


def test_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = _model(_short_pendulum(), tensorboard_log=str(tmp_path))
    # Three rollouts: SB3 dumps before each update, so the first update's scalars and the
    # finished 16-step episodes are written at the second and third dumps.
    model.learn(96)
    runs = glob.glob(str(tmp_path / "ReinFlow_*"))
    assert len(runs) == 1
    events = EventAccumulator(runs[0], size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in (
        "flow/sigma_mean",
        "flow/ratio_mean",
        "flow/ratio_first_minibatch",
        "train/clip_fraction",
        "train/approx_kl",
        "train/entropy_loss",
        "rollout/ep_rew_mean",
    ):
        assert tag in tags, (tag, sorted(tags))
    assert [e.value for e in events.Scalars("flow/ratio_first_minibatch")] == [1.0, 1.0]


def test_evaluate_policy_finite():
    env = _short_pendulum()
    model = _model(env)
    model.learn(32)
    mean, std = evaluate_policy(model, env, n_eval_episodes=2)
    assert np.isfinite(mean) and np.isfinite(std)
    assert mean < 0  # Pendulum rewards are never positive


def test_multigoal():
    model = _model("MultiGoal-v0", K=4)
    model.learn(64)
    assert model.num_timesteps == 64
    values = _update(model)
    assert values["flow/ratio_first_minibatch"] == 1.0
    obs = np.zeros((5, 2), dtype=np.float32)
    actions, _ = model.predict(obs, deterministic=True)
    assert actions.shape == (5, 2)
    assert np.all(np.abs(actions) <= 1.0)


# ---------------------------------------------------------------------- reproducibility


def test_same_seed_same_parameters():
    def trained(seed):
        model = _model(K=2, seed=seed)
        model.learn(64)
        return _state(model.policy)

    first, second = trained(3), trained(3)
    _assert_same_state(first, second)
    other = trained(4)
    assert any(not torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("final", [0.05, 0.3])
def test_sigma_max_final_outside_the_sigma_range_is_refused(final):
    with pytest.raises(ValueError, match="sigma_max_final"):
        _model(sigma_max_final=final)


def test_critic_full_epochs_trains_the_value_net_past_a_kl_stop():
    """target_kl stops the actor after its first minibatch either way; with
    critic_full_epochs the value net goes on for both epochs (4 minibatches, not 1)."""
    trained = {}
    for full in (False, True):
        model = _model(n_steps=32, target_kl=1e-6, critic_full_epochs=full)  # 2 x 16 rows
        model.learn(32)  # one rollout, one update
        trained[full] = model
        assert model._n_updates == (2 if full else 1)  # epochs the loop ran
    stopped, full = trained[False], trained[True]
    _assert_same_state(_state(stopped.policy.actor), _state(full.policy.actor))
    _assert_same_state(_state(stopped.policy.noise_net), _state(full.policy.noise_net))
    critic = _state(full.policy.value_net)
    assert any(not torch.equal(v, critic[k]) for k, v in _state(stopped.policy.value_net).items())
    # Adam counts one step per minibatch the critic stepped on.
    steps = lambda m: max(s["step"] for s in m.policy.critic_optimizer.state.values())  # noqa: E731
    assert (float(steps(stopped)), float(steps(full))) == (1.0, 4.0)


def test_critic_warmup_trains_only_the_value_net():
    model = _model(critic_warmup_updates=2, n_steps=32)
    actor0 = {k: v.clone() for k, v in model.policy.actor.state_dict().items()}
    noise0 = {k: v.clone() for k, v in model.policy.noise_net.state_dict().items()}
    value0 = {k: v.clone() for k, v in model.policy.value_net.state_dict().items()}
    model.learn(64)  # two rollouts, two updates: both warm-up
    for k, v in model.policy.actor.state_dict().items():
        assert torch.equal(v, actor0[k]), k
    for k, v in model.policy.noise_net.state_dict().items():
        assert torch.equal(v, noise0[k]), k
    assert any(
        not torch.equal(v, value0[k]) for k, v in model.policy.value_net.state_dict().items()
    )
    model.learn(32, reset_num_timesteps=False)  # third update: the actor moves
    assert any(not torch.equal(v, actor0[k]) for k, v in model.policy.actor.state_dict().items())
