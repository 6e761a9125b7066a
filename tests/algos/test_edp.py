"""EDP: the score intrinsic reward, reward-free pretraining, and fine-tuning to π_pre·exp(Q/β).

What is pinned: every novelty (score, RND, count) is higher far from a constructed buffer than
in it; the score novelty is the flow core's flow-matching loss on THE time grid (parity with an
independent computation); pretraining never reads the env's reward (a reward that raises on
any use); the candidate weights give π_pre·exp(Q/β) exactly on a discrete toy, and a 1-D flow
distilled with them matches the tilted mode probabilities; IQL's value regression converges
to the expectile; save → load round-trips with the replay buffer; bad arguments get clear
errors.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import SAC

import flowrl.algos.exploration as exploration
from flowrl.algos import EDP, EDPExplore, EDPExploreFlow, ExplorationSAC
from flowrl.algos.edp import expectile_loss, tilted_weights
from flowrl.algos.exploration import (
    CountNovelty,
    RNDNovelty,
    RunningMoments,
    ScoreNovelty,
)
from flowrl.data import Normalizer
from flowrl.flow.times import time_grid
from flowrl.policies import FlowActor, FlowActorConfig

# ---------------------------------------------------------------------- novelties


def _train(novelty, buffer: torch.Tensor, steps: int) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(0, buffer.shape[0], (128,), generator=gen)
        novelty.update(buffer[idx])


@pytest.mark.parametrize(
    "make",
    [
        lambda: ScoreNovelty(2, num_draws=8, width=64, learning_rate=1e-3),
        lambda: RNDNovelty(2, hidden=(64, 64), learning_rate=1e-3),
        lambda: CountNovelty(2, bin_width=0.25),
    ],
    ids=["score", "rnd", "count"],
)
def test_novelty_is_higher_far_from_the_buffer(make):
    torch.manual_seed(0)
    novelty = make()
    buffer = 0.2 * torch.randn(2000, 2)  # a cluster at the origin
    novelty.observe(buffer.numpy())
    _train(novelty, buffer, 400)
    inside = novelty.novelty(0.2 * torch.randn(256, 2))
    far = novelty.novelty(torch.tensor([[3.0, 3.0], [-3.0, 2.0], [2.5, -3.0], [0.0, 3.5]]))
    assert far.shape == (4,) and inside.shape == (256,)
    assert far.min() > 3 * inside.median(), (far, inside.median())


def test_score_novelty_is_flow_matching_error_on_the_time_grid(monkeypatch):
    torch.manual_seed(0)
    novelty = ScoreNovelty(3, num_draws=5, width=32)
    novelty.obs_moments.update(torch.randn(100, 3) * 2 + 1)
    obs = torch.randn(7, 3)
    calls = {"grid": [], "loss": []}
    real_grid, real_loss = exploration.time_grid, exploration.flow_matching_loss

    def grid_spy(n, **kw):
        calls["grid"].append(n)
        return real_grid(n, **kw)

    def loss_spy(*args, **kw):
        calls["loss"].append(kw.get("reduction"))
        return real_loss(*args, **kw)

    monkeypatch.setattr(exploration, "time_grid", grid_spy)
    monkeypatch.setattr(exploration, "flow_matching_loss", loss_spy)
    torch.manual_seed(3)
    got = novelty.novelty(obs)
    assert calls == {"grid": [5], "loss": ["none"] * 5}

    # Independent computation: stratified times in each cell of the grid, the linear path.
    torch.manual_seed(3)
    x = ((obs.double() - novelty.obs_moments.mean) / novelty.obs_moments.std()).float()
    x = x.clamp(-10, 10)
    starts, widths = time_grid(5)
    total = torch.zeros(7)
    with torch.no_grad():
        for start, width in zip(starts, widths, strict=True):
            t = start + width * torch.rand(7)
            eps = torch.randn_like(x)
            x_t = t[:, None] * x + (1 - t[:, None]) * eps
            v = novelty.velocity_net(t, x_t)
            total += (v - (x - eps)).square().mean(dim=1)
    torch.testing.assert_close(got, total / 5)


def test_running_moments_match_numpy():
    data = np.random.default_rng(0).normal(3.0, 2.0, size=(1000, 2))
    moments = RunningMoments(2)
    for chunk in np.array_split(data, 7):
        moments.update(torch.as_tensor(chunk))
    np.testing.assert_allclose(moments.mean.numpy(), data.mean(0), rtol=1e-10)
    np.testing.assert_allclose(moments.var.numpy(), data.var(0), rtol=1e-10)


def test_count_novelty_counts_env_steps_not_replay_draws():
    novelty = CountNovelty(2, bin_width=1.0)
    state = np.array([[0.5, 0.5]])
    for _ in range(4):
        novelty.observe(state)
    novelty.update(torch.as_tensor(state, dtype=torch.float32))  # no effect on counts
    assert float(novelty.novelty(torch.tensor([[0.2, 0.9]]))) == pytest.approx(0.5)
    assert float(novelty.novelty(torch.tensor([[5.0, 5.0]]))) == 1.0


# ---------------------------------------------------------------------- reward-free


class _Poison:
    """A reward that raises on any use."""

    def _raise(self, *args, **kwargs):
        raise AssertionError("the env's reward was read")

    __float__ = __int__ = __bool__ = __index__ = __array__ = _raise
    __add__ = __radd__ = __mul__ = __rmul__ = __sub__ = __rsub__ = __truediv__ = _raise
    __lt__ = __gt__ = __le__ = __ge__ = __eq__ = _raise
    __hash__ = None


class PoisonReward(gym.Wrapper):
    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        return obs, _Poison(), terminated, truncated, info


def test_poison_reward_is_detected_by_plain_sac():
    with pytest.raises(AssertionError, match="reward was read"):
        SAC("MlpPolicy", PoisonReward(gym.make("Pendulum-v1")), learning_starts=10).learn(20)


@pytest.mark.parametrize("learner", ["edp", "edp_flow", "rnd", "count"])
def test_pretraining_never_reads_the_env_reward(learner):
    env = PoisonReward(gym.make("Pendulum-v1", max_episode_steps=50))
    small = dict(learning_starts=40, batch_size=32, seed=0)
    if learner == "edp":
        model = EDPExplore(
            "MlpPolicy",
            env,
            intrinsic_kwargs=dict(num_draws=2, width=16),
            actor_config=dict(width=16, depth=1, num_steps=2),
            policy_kwargs=dict(net_arch=[16]),
            **small,
        )
    elif learner == "edp_flow":
        model = EDPExploreFlow(
            "FlowSACPolicy",
            env,
            intrinsic_kwargs=dict(num_draws=2, width=16),
            actor_config=dict(width=16, depth=1, num_steps=2),
            policy_kwargs=dict(actor_config=dict(width=16, depth=1, num_steps=2)),
            **small,
        )
    else:
        model = ExplorationSAC(
            "MlpPolicy", env, intrinsic=learner, policy_kwargs=dict(net_arch=[16]), **small
        )
    model.learn(120)  # episodes end (truncation at 50) and training runs
    assert model.num_timesteps == 120 and model.replay_buffer.size() == 120
    assert np.all(model.replay_buffer.rewards[:120] == 0)


def test_intrinsic_rewards_replace_the_batch_rewards():
    model = ExplorationSAC(
        "MlpPolicy", "Pendulum-v1", intrinsic="count", learning_starts=10, batch_size=16, seed=0
    )
    model.learn(30)
    data = model.replay_buffer.sample(16)
    relabelled = model._relabel(data)
    expected = model.novelty_model.novelty(data.next_observations) / model.reward_moments.std()
    torch.testing.assert_close(relabelled.rewards.flatten(), expected.float().flatten())
    assert float(data.rewards.abs().sum()) == 0.0


# ---------------------------------------------------------------------- the fine-tuning target


def test_tilted_weights_are_exact_on_a_discrete_toy():
    """Candidates carrying π_pre's mass exactly: Σ of their weights per action = π_tilted."""
    p = np.array([0.1, 0.2, 0.3, 0.4])
    q = np.array([1.0, -0.5, 0.3, 0.0])
    beta = 0.7
    exact = p * np.exp(q / beta)
    exact /= exact.sum()
    actions = np.repeat(np.arange(4), (p * 10).astype(int))  # 1, 2, 3, 4 copies
    w = tilted_weights(torch.as_tensor(q[actions]), beta).numpy()
    tilted = np.bincount(actions, weights=w, minlength=4)
    np.testing.assert_allclose(tilted, exact, rtol=1e-12)
    # and by sampling π_pre: self-normalized importance sampling converges to the same target
    rng = np.random.default_rng(0)
    draws = rng.choice(4, size=200_000, p=p)
    w = tilted_weights(torch.as_tensor(q[draws]), beta).numpy()
    np.testing.assert_allclose(np.bincount(draws, weights=w, minlength=4), exact, atol=5e-3)


def test_tilted_weights_limits():
    q = torch.tensor([[0.0, 1.0, 2.0]])
    assert torch.allclose(tilted_weights(q, 1e-4), torch.tensor([[0.0, 0.0, 1.0]]))
    assert torch.allclose(tilted_weights(q, 1e6), torch.full((1, 3), 1 / 3), atol=1e-5)
    with pytest.raises(ValueError, match="beta"):
        tilted_weights(q, 0.0)


MODES = torch.tensor([-0.7, 0.0, 0.7])
PRIOR = torch.tensor([0.5, 0.3, 0.2])
Q_MODES = torch.tensor([0.0, 0.2, 0.4])


def _mode_of(actions: torch.Tensor) -> torch.Tensor:
    return (actions.reshape(-1, 1) - MODES).abs().argmin(dim=1)


class _ModeQ(torch.nn.Module):
    """Q(o, a) = Q_MODES[nearest mode of a] (the same for every critic)."""

    def forward(self, x):
        return Q_MODES[_mode_of(x[:, -1])].unsqueeze(-1)


@pytest.mark.slow  # about 2 minutes: a flow fitted well enough that its modes are sharp
def test_distillation_matches_the_tilted_mode_probabilities():
    """A 1-D three-mode π_pre, a known Q: the distilled flow's mode frequencies = π_pre·e^{Q/β}.

    The exact target is computed from π_pre's own mode frequencies (the fitted flow's, which
    differ a little from the data's), so the check is of the distillation alone.
    """
    torch.manual_seed(0)
    env = gym.make("Pendulum-v1")  # Do = 3; actions are scaled to [−1, 1] below
    config = FlowActorConfig(obs_dim=3, action_dim=1, width=128, depth=2, num_steps=16)
    prior = FlowActor(
        config, Normalizer.identity(3), Normalizer.box(-2.0 * np.ones(1), 2.0 * np.ones(1))
    )
    opt = torch.optim.Adam(prior.parameters(), lr=2e-3)
    for _ in range(2000):  # BC on the mixture (env units: modes × 2)
        modes = torch.multinomial(PRIOR, 256, replacement=True)
        a = MODES[modes] + 0.03 * torch.randn(256)
        loss = prior.bc_loss(torch.zeros(256, 3), 2.0 * a.unsqueeze(-1))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    beta = 0.2
    model = EDP(
        "EDPPolicy",
        env,
        policy_kwargs=dict(pretrained=prior),
        beta=beta,
        num_candidates=32,
        learning_rate=1e-3,
        seed=0,
    )
    policy = model.policy
    policy.critic = torch.nn.ModuleList([_ModeQ(), _ModeQ()])
    obs = torch.zeros(64, 3)
    with torch.no_grad():
        prior_modes = _mode_of(policy.sample_normalized(torch.zeros(8000, 3), reference=True))
    prior_freq = torch.bincount(prior_modes, minlength=3).double() / 8000
    assert torch.allclose(prior_freq, PRIOR.double(), atol=0.06), prior_freq
    for _ in range(1000):
        loss, _ = model.distillation_loss(obs)
        policy.optimizer.zero_grad()
        loss.backward()
        policy.optimizer.step()
    with torch.no_grad():
        got = _mode_of(policy.sample_normalized(torch.zeros(8000, 3)))
    freq = torch.bincount(got, minlength=3).double() / 8000
    exact = prior_freq * torch.exp(Q_MODES.double() / beta)
    exact /= exact.sum()
    assert torch.allclose(freq, exact, atol=0.05), (freq, exact)
    assert not torch.allclose(exact, prior_freq, atol=0.1)  # the tilt is not a no-op


def test_expectile_regression_converges_to_the_expectile():
    rng = np.random.default_rng(0)
    samples = torch.as_tensor(rng.normal(size=5000))
    tau = 0.9
    v = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([v], lr=0.05)
    for _ in range(1500):
        loss = expectile_loss(samples - v, tau).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    # the τ-expectile e solves τ·E[(x − e)+] = (1 − τ)·E[(e − x)+]; bisection
    lo, hi = -3.0, 3.0
    x = samples.numpy()
    for _ in range(80):
        e = 0.5 * (lo + hi)
        gap = tau * np.clip(x - e, 0, None).mean() - (1 - tau) * np.clip(e - x, 0, None).mean()
        lo, hi = (e, hi) if gap > 0 else (lo, e)
    assert float(v) == pytest.approx(e, abs=1e-3)


# ---------------------------------------------------------------------- save / load


def _explore(env="Pendulum-v1", **kw):
    return EDPExplore(
        "MlpPolicy",
        env,
        learning_starts=30,
        batch_size=16,
        intrinsic_kwargs=dict(num_draws=2, width=16),
        actor_config=dict(width=16, depth=1, num_steps=2),
        policy_kwargs=dict(net_arch=[16]),
        seed=0,
        **kw,
    )


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_edp_explore_round_trips_with_the_replay_buffer(tmp_path):
    model = _explore()
    model.learn(80)
    model.save(tmp_path / "explore.zip")
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    loaded = EDPExplore.load(tmp_path / "explore.zip", env=gym.make("Pendulum-v1"))
    loaded.load_replay_buffer(tmp_path / "buffer.pkl")
    _assert_same_state(model.novelty_model, loaded.novelty_model)
    _assert_same_state(model.prior_actor, loaded.prior_actor)
    _assert_same_state(model.reward_moments, loaded.reward_moments)
    np.testing.assert_array_equal(
        model.replay_buffer.observations[:80], loaded.replay_buffer.observations[:80]
    )
    obs = np.zeros(3, dtype=np.float32)
    np.testing.assert_array_equal(
        model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0]
    )
    assert loaded.prior_optimizer.state_dict()["state"]  # Adam's moments came back
    loaded.learn(20, reset_num_timesteps=False)  # and training goes on
    # π_pre as a FlowActor checkpoint for fine-tuning
    model.save_pretrained(tmp_path / "prior.pt")
    _assert_same_state(FlowActor.load(tmp_path / "prior.pt"), model.prior_actor)


def test_count_baseline_round_trips_its_counts(tmp_path):
    model = ExplorationSAC(
        "MlpPolicy", "Pendulum-v1", intrinsic="count", learning_starts=10, batch_size=8, seed=0
    )
    model.learn(40)
    model.save(tmp_path / "count.zip")
    loaded = ExplorationSAC.load(tmp_path / "count.zip")
    assert loaded.intrinsic == "count"
    torch.testing.assert_close(loaded.novelty_model.counts, model.novelty_model.counts)
    assert float(loaded.novelty_model.counts.sum()) == 40


def test_edp_round_trips_with_the_replay_buffer(tmp_path):
    explore = _explore()
    explore.learn(40)
    model = EDP(
        "EDPPolicy",
        "Pendulum-v1",
        policy_kwargs=dict(pretrained=explore.pretrained_actor, value_hidden=(16,)),
        learning_starts=30,
        batch_size=16,
        num_candidates=4,
        seed=0,
    )
    model.learn(60)
    assert model.logger.name_to_value["edp/candidate_ess"] > 1
    model.save(tmp_path / "edp.zip")
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    loaded = EDP.load(tmp_path / "edp.zip", env=gym.make("Pendulum-v1"))
    loaded.load_replay_buffer(tmp_path / "buffer.pkl")
    _assert_same_state(model.policy, loaded.policy)
    np.testing.assert_array_equal(
        model.replay_buffer.rewards[:60], loaded.replay_buffer.rewards[:60]
    )
    obs = np.array([1.0, 0.0, 0.5], dtype=np.float32)
    np.testing.assert_array_equal(
        model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0]
    )
    # the reference (π_pre) travels in the checkpoint and stays frozen
    _assert_same_state(loaded.policy.reference, explore.prior_actor)


def test_edp_deterministic_action_is_the_ode_from_zero():
    explore = _explore()
    model = EDP("EDPPolicy", "Pendulum-v1", policy_kwargs=dict(pretrained=explore.pretrained_actor))
    obs = torch.tensor([[1.0, 0.0, 0.5]])
    expected = model.policy.ode_endpoint(obs, torch.zeros(1, 1)).clamp(-1, 1) * 2.0
    torch.testing.assert_close(model.policy._predict(obs, deterministic=True), expected)


# ---------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(beta=0.0), "beta"),
        (dict(beta=float("inf")), "beta"),
        (dict(num_candidates=0), "num_candidates"),
        (dict(distill_interval=0), "distill_interval"),
        (dict(expectile=1.0), "expectile"),
        (dict(critic_warmup_steps=-1), "critic_warmup_steps"),
        (dict(distill_batch_size=0), "distill_batch_size"),
        (dict(warmup="sometimes"), "warmup"),
    ],
)
def test_edp_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EDP("EDPPolicy", "Pendulum-v1", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(intrinsic="curiosity"), "unknown intrinsic reward 'curiosity'"),
        (dict(intrinsic_scale=0.0), "intrinsic_scale"),
        (dict(novelty_updates=0), "novelty_updates"),
    ],
)
def test_exploration_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExplorationSAC("MlpPolicy", "Pendulum-v1", **kwargs)


def test_state_model_refuses_observations_it_cannot_take():
    space = gym.spaces.Dict({"observation": gym.spaces.Box(-1, 1, (4,))})

    class DictObs(gym.Env):
        observation_space = space
        action_space = gym.spaces.Box(-1, 1, (2,))

        def reset(self, *, seed=None, options=None):
            return space.sample(), {}

        def step(self, action):
            return space.sample(), 0.0, False, False, {}

    with pytest.raises(ValueError, match="flat vector observations"):
        EDPExplore("MultiInputPolicy", DictObs())
    with pytest.raises(ValueError, match="shape"):
        ScoreNovelty(4).novelty(torch.zeros(3, 5))


# ---------------------------------------------------------------------- the SB3 surface


def test_edp_behaves_as_an_sb3_algorithm(tmp_path):
    """Callbacks, TensorBoard (a run named EDP), evaluate_policy and batched predict."""
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    class Count(BaseCallback):
        calls = 0

        def _on_step(self) -> bool:
            Count.calls += 1
            return True

    explore = _explore()
    model = EDP(
        "EDPPolicy",
        make_vec_env("Pendulum-v1", n_envs=2, seed=0),
        policy_kwargs=dict(pretrained=explore.pretrained_actor, value_hidden=(16,)),
        learning_starts=20,
        batch_size=16,
        num_candidates=4,
        tensorboard_log=str(tmp_path / "tb"),
        seed=0,
    )
    model.learn(60, callback=Count())
    assert Count.calls == 30  # one call per vectorized step of 2 envs
    runs = list((tmp_path / "tb").iterdir())
    assert [run.name for run in runs] == ["EDP_1"]
    from stable_baselines3.common.monitor import Monitor

    mean, _ = evaluate_policy(model, Monitor(gym.make("Pendulum-v1", max_episode_steps=20)), 2)
    assert np.isfinite(mean)
    actions, _ = model.predict(np.zeros((5, 3), dtype=np.float32), deterministic=False)
    assert actions.shape == (5, 1) and np.all(np.abs(actions) <= 2.0)
